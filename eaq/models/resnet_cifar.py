"""The CIFAR ResNet-20 of He et al. 2016 ("Deep Residual Learning", section 4.2).

Three stages of three basic blocks (16, 32, 64 channels; strides 1, 2, 2) after a 3x3 stem, with
'option A' shortcuts: where a block changes shape the shortcut subsamples by stride 2 and pads
the new channels with zeros, so it has no parameters. Module names follow the widely used
``akamaster/pytorch_resnet_cifar10`` layout, so its checkpoints (``models/resnet20_cifar10.th``
in the data root) load strictly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.models.registry import ModelInfo, register_model
from eaq.models.weights import state_dict_from_url

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET20_URL = (
    "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/"
    "pretrained_models/resnet20-12fca82f.th"
)
"""The original release of ``models/resnet20_cifar10.th`` (same sha256 prefix, BSD-2-Clause)."""


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad ``pad`` channels on each side.

    Examples:
        >>> import torch
        >>> PadShortcut(pad=8)(torch.ones(1, 16, 32, 32)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, pad: int, stride: int = 2) -> None:
        super().__init__()
        self.pad = pad
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}, stride={self.stride}"


class BasicBlockA(nn.Module):
    """Two 3x3 conv-BN layers and an identity ('option A') shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(pad=(planes - in_planes) // 2, stride=stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts; ``blocks=(3, 3, 3)`` is ResNet-20."""

    def __init__(self, blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, n, stride in zip((16, 32, 64), blocks, (1, 2, 2), strict=True):
            layers = []
            for i in range(n):
                layers.append(BasicBlockA(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


RESIDUAL_BLOCKS: dict[type[nn.Module], int] = {BasicBlockA: 1}
"""Residual block types -> element-wise adds of their output size per call (for energy stats)."""


def _resnet20_pretrained(num_classes: int, input_size: int) -> nn.Module:
    if num_classes != 10:
        raise EaqError(
            f"the pretrained resnet20_cifar has 10 classes, not {num_classes}; "
            "drop --num-classes or pass --weights PATH"
        )
    model = ResNetCifar((3, 3, 3), num_classes)
    model.load_state_dict(
        state_dict_from_url(RESNET20_URL, model_name="resnet20_cifar", check_hash=True)
    )
    return model


@register_model(
    ModelInfo(
        name="resnet20_cifar",
        description="CIFAR-10 ResNet-20 (He et al. 2016), option-A shortcuts, 0.27M params",
        family="cnn",
        num_classes=10,
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_dataset="cifar10",
        default_weights="models/resnet20_cifar10.th",
    ),
    pretrained=_resnet20_pretrained,
)
def resnet20_cifar(num_classes: int, input_size: int) -> nn.Module:
    """ResNet-20 for 32x32 inputs (any size works: it ends in a global average pool)."""
    return ResNetCifar((3, 3, 3), num_classes)
