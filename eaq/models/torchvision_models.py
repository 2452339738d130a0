"""torchvision ResNet-18, with its ImageNet stem or with the CIFAR stem.

Both keep torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``).
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights

from eaq.errors import EaqError
from eaq.models.registry import ModelInfo, register_model
from eaq.models.weights import state_dict_from_url

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _resnet18_pretrained(num_classes: int, input_size: int) -> nn.Module:
    weights = ResNet18_Weights.IMAGENET1K_V1
    n_ref = len(weights.meta["categories"])
    if num_classes != n_ref:
        raise EaqError(
            f"torchvision's pretrained resnet18 ({weights}) has {n_ref} classes, not "
            f"{num_classes}; pass --num-classes {n_ref}, or --weights PATH for a "
            f"{num_classes}-class checkpoint"
        )
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.load_state_dict(state_dict_from_url(weights.url, model_name="resnet18"))
    return model


@register_model(
    ModelInfo(
        name="resnet18",
        description="torchvision ResNet-18 (ImageNet stem: 7x7/2 conv + max-pool), CIFAR-100 32x32",
        family="cnn",
        num_classes=100,
        input_size=32,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_dataset="cifar100",
        # trained here (docs/training.md; the manifest records each step's recipe)
        default_weights="checkpoints/resnet18_cifar100.safetensors",
    ),
    pretrained=_resnet18_pretrained,
)
def resnet18(num_classes: int, input_size: int) -> nn.Module:
    """torchvision's ResNet-18 as is (any input size: it ends in a global average pool)."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@register_model(
    ModelInfo(
        name="resnet18_cifar",
        description="ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), CIFAR-100 32x32",
        family="cnn",
        num_classes=100,
        input_size=32,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_dataset="cifar100",
        # trained here (docs/training.md; the manifest records each step's recipe)
        default_weights="checkpoints/resnet18_cifar_cifar100.safetensors",
    )
)
def resnet18_cifar(num_classes: int, input_size: int) -> nn.Module:
    """torchvision's ResNet-18 with ``conv1`` a 3x3 stride-1 conv and ``maxpool`` removed."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
