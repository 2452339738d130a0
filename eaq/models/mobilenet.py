"""MobileNetV2 (Sandler et al. 2018) with a CIFAR stem: the depthwise-separable reference model.

torchvision's ``MobileNetV2`` (module names ``features.0.0``, ``features.1.conv.0.0``, ...,
``classifier.1``) with the two changes the usual CIFAR adaptation makes so that a 32x32 image is
not reduced to 1x1: the stem convolution has stride 1 instead of 2, and the second stage
(24 channels) has stride 1 instead of 2. The feature map then shrinks 32 -> 16 -> 8 -> 4 over
the stages instead of 224 -> 7, and the network does about 95 M multiply-accumulates per image.
"""

from __future__ import annotations

import torchvision
from torch import nn

from eaq.models.registry import ModelInfo, register_model
from eaq.models.torchvision_models import CIFAR100_MEAN, CIFAR100_STD

CIFAR_INVERTED_RESIDUAL_SETTING = [
    # expansion t, output channels c, blocks n, first stride s (torchvision's layout)
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # stride 2 at ImageNet size
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


@register_model(
    ModelInfo(
        name="mobilenetv2_cifar",
        description="torchvision MobileNetV2 (depthwise-separable) with a CIFAR stem, CIFAR-100",
        family="cnn",
        num_classes=100,
        input_size=32,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_dataset="cifar100",
        default_weights="checkpoints/mobilenetv2_cifar_cifar100.safetensors",
    )
)
def mobilenetv2_cifar(num_classes: int, input_size: int) -> nn.Module:
    """MobileNetV2 for 32x32 inputs: stride-1 stem and second stage (any size works)."""
    model = torchvision.models.mobilenet_v2(
        weights=None,
        num_classes=num_classes,
        inverted_residual_setting=CIFAR_INVERTED_RESIDUAL_SETTING,
    )
    stem = model.features[0][0]
    stem.stride = (1, 1)
    return model
