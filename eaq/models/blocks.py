"""The residual blocks of eaq's model families: the units that methods and measures treat whole.

Block reconstruction (BRECQ/QDrop) optimises one block at a time, and the end-to-end KL
sensitivity replays the float outputs of the blocks before a layer instead of computing them
(:class:`~eaq.nn.hooks.PrefixReplay`). Both find the blocks here.
"""

from __future__ import annotations

from torch import nn

from eaq.models.resnet_cifar import BasicBlockA


def _block_types() -> tuple[type[nn.Module], ...]:
    types: list[type[nn.Module]] = [BasicBlockA]
    try:
        from torchvision.models.mobilenetv2 import InvertedResidual
        from torchvision.models.resnet import BasicBlock, Bottleneck

        types += [BasicBlock, Bottleneck, InvertedResidual]
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        from timm.models.vision_transformer import Block

        types.append(Block)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(types)


BLOCK_TYPES: tuple[type[nn.Module], ...] = _block_types()
"""Residual block types: eaq's ``BasicBlockA``, torchvision's ``BasicBlock``, ``Bottleneck`` and
MobileNetV2's ``InvertedResidual``, timm's ViT ``Block``."""


def outer_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of ``model`` (:data:`BLOCK_TYPES`) not inside another, in module order.

    Examples:
        >>> from eaq.models import create_model
        >>> outer_blocks(create_model("resnet20_cifar"))[:2]
        ['layer1.0', 'layer1.1']
    """
    names: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, BLOCK_TYPES) and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    return names


__all__ = ["BLOCK_TYPES", "outer_blocks"]
