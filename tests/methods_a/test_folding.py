"""BatchNorm folding."""

import torch
import torchvision
from torch import nn

from eaq.methods.folding import _pairs_by_graph, _pairs_by_name, fold_batchnorm_
from eaq.models import ResNetCifar


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def test_resnet20_folds_exactly():
    torch.manual_seed(0)
    model = _randomise_bn(ResNetCifar((1, 1, 1), 10))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        pairs = fold_batchnorm_(model)
        out = model(x)
    assert len(pairs) == 7  # stem + 3 blocks x 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_graph_and_naming_rules_agree_on_torchvision_resnet():
    model = torchvision.models.resnet18(num_classes=10).eval()
    graph = _pairs_by_graph(model)
    assert graph is not None and sorted(graph) == sorted(_pairs_by_name(model))
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in graph


def test_torchvision_resnet_output_unchanged():
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fold_batchnorm_(model)
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-5)


def test_bn_with_other_consumers_is_not_folded():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used twice

    assert fold_batchnorm_(Branch().eval()) == []
