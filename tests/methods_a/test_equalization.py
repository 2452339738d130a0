"""Cross-layer equalization and high-bias absorption (DFQ)."""

import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.methods import quantize_model_
from eaq.methods.equalization import (
    absorb_high_bias_,
    equalization_pairs,
    equalize_,
    replace_relu6_,
)
from eaq.methods.folding import fold_batchnorm_
from eaq.plan import Plan


def separable(seed: int = 0) -> nn.Module:
    """pointwise -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> pointwise, with badly spread
    channel ranges (as trained depthwise layers have)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        spread = torch.logspace(-2, 1, 8)
        net[0].weight.mul_(spread.reshape(-1, 1, 1, 1))
        net[3].weight.mul_(spread.flip(0).reshape(-1, 1, 1, 1))
        for bn in (net[1], net[4]):
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.2, 0.5)
            bn.bias.uniform_(0.5, 3.0)
    return net.eval()


def test_pairs_follow_relus_and_depthwise_chains():
    net = separable()
    fold_batchnorm_(net)
    replace_relu6_(net)
    assert equalization_pairs(net) == [("0", "3"), ("3", "6")]


def test_equalization_keeps_the_function_and_balances_ranges():
    net = separable()
    fold_batchnorm_(net)
    replace_relu6_(net)
    x = torch.rand(4, 3, 8, 8)  # small inputs: ReLU6 never clips, so ReLU is the same function
    with torch.no_grad():
        before = net(x)
    pairs = equalization_pairs(net)
    equalize_(net, pairs, rounds=50)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    r1 = net[0].weight.abs().flatten(1).amax(1)
    r2 = net[3].weight.abs().flatten(1).amax(1)
    spread = lambda r: float(r.max() / r.min())  # noqa: E731
    r1, r2 = r1.detach(), r2.detach()
    assert spread(r1) < 10 and spread(r2) < 10  # were 1000 before


def test_high_bias_absorption_is_exact_where_the_preactivation_is_above_c():
    net = separable()
    stats = {"0": (net[1].bias.detach().clone(), net[1].weight.detach().clone())}
    fold_batchnorm_(net)
    replace_relu6_(net)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    pairs = equalization_pairs(net)[:1]
    scales = equalize_(net, pairs)
    b_before = net[0].weight.new_zeros(8) if net[0].bias is None else net[0].bias.clone()
    assert absorb_high_bias_(net, pairs, stats, scales) == 1
    assert bool((net[0].bias < b_before).any())
    with torch.no_grad():
        inner = net[:2](x)
    assert bool((inner > 0).all())  # every pre-activation stayed above its c
    with torch.no_grad():  # exact away from the depthwise conv's zero-padded border
        after = net[:6](x)[..., 1:-1, 1:-1]
        ref = separable()
        fold_batchnorm_(ref)
        replace_relu6_(ref)
        torch.testing.assert_close(after, ref[:6](x)[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    del before


def test_cle_beats_plain_ptq_at_low_width():
    x = torch.rand(64, 3, 8, 8)
    calib = [(x, None)]
    ref = separable()
    with torch.no_grad():
        target = ref(x)
    errors = {}
    for method in ("ptq", "cle"):
        net = separable()
        plan = Plan.uniform(4, 8, first_last_8bit=False)
        quantize_model_(net, plan, calib, method)
        with torch.no_grad():
            errors[method] = float((net(x) - target).pow(2).mean())
    assert errors["cle"] < 0.5 * errors["ptq"]


def test_cle_without_pairs_is_an_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(EaqError, match="no pair of convolutions"):
        quantize_model_(net, Plan.uniform(8, 8), [(torch.rand(2, 3, 8, 8), None)], "cle")


def test_cle_absorbs_bias_where_a_pair_without_relu_comes_first(caplog):
    """A linear bottleneck (conv -> BN -> conv, nothing between) before a ReLU pair, as in
    MobileNetV2: each absorbed pair uses its own equalization scale, and the function holds."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4),
        nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 1), nn.Flatten(),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[3].weight.uniform_(0.01, 0.05)  # BN shift far above 3 x its scale: bias absorbed
        net[3].bias.uniform_(1.0, 2.0)
    x = torch.rand(16, 3, 4, 4)
    with torch.no_grad():
        want = net(x)
    caplog.set_level("INFO", logger="eaq.methods.equalization")
    quantize_model_(net, Plan.uniform(16, 16, first_last_8bit=False), [(x, None)], "cle")
    assert "2 pairs equalized, high bias absorbed in 1" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=1e-3, atol=1e-3)
