"""DeiT-Tiny from timm, at ImageNet size and with 4x4 patches for 32x32 CIFAR images.

Every attention block runs timm's non-fused path (``Attention.fused_attn = False``), so the
``q @ k^T`` and ``attn @ v`` matmuls are explicit in the forward pass rather than hidden inside
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eaq.models import weights
from eaq.models.registry import ModelInfo, register_model
from eaq.models.torchvision_models import CIFAR100_MEAN, CIFAR100_STD
from eaq.models.weights import hf_hub_offline_unless, offline_error

DEIT_TINY = "deit_tiny_patch16_224"
_DEIT_CFG = timm.models.get_pretrained_cfg(DEIT_TINY)


def unfuse_attention_(model: nn.Module) -> nn.Module:
    """Switch every timm attention block to the non-fused (explicit matmul) path, in place.

    Returns:
        ``model``, for chaining.
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def _deit_tiny(num_classes: int, input_size: int, pretrained: bool) -> nn.Module:
    model = timm.create_model(
        DEIT_TINY, pretrained=pretrained, num_classes=num_classes, img_size=input_size
    )
    return unfuse_attention_(model)


def _deit_tiny_pretrained(num_classes: int, input_size: int) -> nn.Module:
    source = f"the Hugging Face Hub ({_DEIT_CFG.hf_hub_id})"
    reachable = weights.host_reachable("https://huggingface.co")
    try:
        with hf_hub_offline_unless(reachable):
            return _deit_tiny(num_classes, input_size, pretrained=True)
    except Exception as exc:  # network, cache and hub errors alike
        raise offline_error("deit_tiny", source, exc) from exc


@register_model(
    ModelInfo(
        name="deit_tiny",
        description="timm deit_tiny_patch16_224 (192 dims, 12 blocks, 3 heads), ImageNet 224",
        family="vit",
        num_classes=_DEIT_CFG.num_classes,
        input_size=_DEIT_CFG.input_size[-1],
        mean=tuple(_DEIT_CFG.mean),
        std=tuple(_DEIT_CFG.std),
        default_dataset="imagenet",
        default_weights=None,
    ),
    pretrained=_deit_tiny_pretrained,
)
def deit_tiny(num_classes: int, input_size: int) -> nn.Module:
    """timm's DeiT-Tiny with random weights and non-fused attention."""
    return _deit_tiny(num_classes, input_size, pretrained=False)


@register_model(
    ModelInfo(
        name="deit_tiny_cifar",
        description="DeiT-Tiny widths (192/12/3) with 4x4 patches for 32x32 CIFAR-100",
        family="vit",
        num_classes=100,
        input_size=32,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_dataset="cifar100",
        # trained here (docs/training.md; the manifest records each step's recipe)
        default_weights="checkpoints/deit_tiny_cifar_cifar100.safetensors",
    )
)
def deit_tiny_cifar(num_classes: int, input_size: int) -> nn.Module:
    """A timm VisionTransformer: 4x4 patches, 192 dims, 12 blocks, 3 heads, non-fused attention."""
    model = VisionTransformer(
        img_size=input_size,
        patch_size=4,
        embed_dim=192,
        depth=12,
        num_heads=3,
        num_classes=num_classes,
    )
    return unfuse_attention_(model)
