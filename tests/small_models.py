"""Small models with random weights that tests build in several places."""

import torch
from torch import nn


def resnet20() -> nn.Module:
    """eaq's resnet20_cifar, random weights (seed 0), in eval mode."""
    from eaq.models import create_model

    torch.manual_seed(0)
    return create_model("resnet20_cifar", weights="random").eval()


def vit(depth: int = 2) -> nn.Module:
    """A timm ViT on 8x8 images: patches of 4, width 16, 2 heads, 5 classes (seed 0)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, num_classes=5, embed_dim=16, depth=depth, num_heads=2
    ).eval()
