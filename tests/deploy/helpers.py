"""Small quantized models for the deployment tests."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eaq.methods import quantize_model_
from eaq.models import unfuse_attention_
from eaq.plan import Plan


class TinyConvNet(nn.Module):
    """conv-BN-ReLU, a residual conv-BN pair, pooling and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():  # BatchNorms that do something, one with a negative scale
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
            self.bn2.weight[0] = -0.7

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)) + x)
        x = self.relu(self.dw(x))
        return self.fc(self.pool(x).flatten(1))


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A one-block timm ViT on 8x8 images, non-fused attention."""
    model = VisionTransformer(
        img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=num_classes
    )
    return unfuse_attention_(model).eval()


def calib(size: int = 8, n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long))]


def quantized(model: nn.Module, plan: Plan, size: int, method: str = "ptq") -> nn.Module:
    quantize_model_(model.eval(), plan, calib(size), method)
    return model
