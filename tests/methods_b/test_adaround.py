"""AdaRound: the rounding module, the schedule, one layer, and mixed-precision plans."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from eaq.methods import method_names, quantize_model_
from eaq.methods.adaround import (
    AdaRoundConfig,
    AdaRoundWeight,
    adaround_,
    attach_rounding_,
    bake_rounding_,
    optimize_rounding_,
    prepare_,
)
from eaq.models import ResNetCifar
from eaq.nn import QuantConv2d, QuantLinear, quantizable_layers
from eaq.plan import LayerConfig, Plan
from eaq.quant import Quantizer, QuantSpec, fake_quantize
from eaq.quant.granularity import PerChannel, PerGroup

from .helpers import correlated


def _weight_quantizer(w: torch.Tensor, bits: int = 4, **kw) -> Quantizer:
    spec = QuantSpec(bits=bits, signed=True, granularity=PerChannel(0), **kw)
    return Quantizer(spec).calibrate_(w)


def test_registered():
    assert {"adaround", "brecq", "qdrop"} <= set(method_names())


@pytest.mark.parametrize("symmetric", [True, False])
def test_init_soft_weight_is_float_weight_and_hard_is_nearest(symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)
    q = _weight_quantizer(w, symmetric=symmetric)
    ada = AdaRoundWeight(w, q)
    inside = (ada.w_floor + ada.zero_point >= ada.qmin) & (ada.w_floor + ada.zero_point < ada.qmax)
    assert inside.float().mean() > 0.9  # only the extremes can clip (affine zero point rounding)
    torch.testing.assert_close(ada(w)[inside], w[inside], atol=1e-5, rtol=0)
    ada.harden()
    rtn = q(w)
    # identical except exact .5 ties (round-half-even vs h >= 0.5), none in random data
    assert torch.equal(ada(w), rtn)


def test_per_group_scales_broadcast():
    torch.manual_seed(0)
    w = torch.randn(4, 16)
    q = Quantizer(QuantSpec(bits=4, signed=True, granularity=PerGroup(8))).calibrate_(w)
    ada = AdaRoundWeight(w, q)
    ada.harden()
    assert torch.equal(ada(w), q(w))


def test_beta_schedule():
    cfg = AdaRoundConfig(iters=100, warmup=0.2)
    assert cfg.beta(0) is None and cfg.beta(19) is None
    assert cfg.beta(20) == pytest.approx(20.0)
    assert cfg.beta(99) == pytest.approx(2.0, abs=0.2)
    betas = [cfg.beta(i) for i in range(20, 100)]
    assert betas == sorted(betas, reverse=True)


def _one_conv_model(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1)).eval()
    calib = [(correlated(64, 8, 6, seed), torch.zeros(64))]
    return model, calib


def test_adaround_layer_beats_round_to_nearest():
    model, calib = _one_conv_model()
    plan = Plan.uniform(3, 8, first_last_8bit=False)
    _, float_model = prepare_(model, plan, calib)
    rtn = copy.deepcopy(model)
    layer = model[0]
    w0 = layer.weight.detach().clone()
    scale = layer.weight_quantizer.scale.clone()
    stats = adaround_(model, float_model, calib, AdaRoundConfig(iters=300, batch_size=32))

    x = calib[0][0]
    with torch.no_grad():
        target = float_model(x)
        err_rtn = (rtn(x) - target).pow(2).mean()
        err_ada = (model(x) - target).pow(2).mean()
    assert err_ada < 0.9 * err_rtn
    assert stats[0].error_after < stats[0].error_before
    # every learned code is floor(w/s) or floor(w/s) + 1, and the quantizer reproduces the weight
    assert torch.equal(layer.weight_quantizer.scale, scale)
    codes = torch.round(layer.weight / scale)
    step = codes - torch.floor(w0 * torch.reciprocal(scale))
    assert set(step.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(layer.weight_quantizer(layer.weight), layer.weight)
    assert isinstance(layer.weight_quantizer, Quantizer)


def test_bake_is_exact_for_affine_weights():
    torch.manual_seed(1)
    layer = QuantLinear.from_float(
        nn.Linear(16, 8), LayerConfig(w_bits=4, a_bits=None, symmetric=False)
    )
    layer.weight_quantizer.calibrate_(layer.weight)
    quantizer = layer.weight_quantizer
    [(_, _, ada)] = attach_rounding_([layer])
    x = torch.randn(64, 16)
    optimize_rounding_(layer, [ada], x, x @ torch.randn(16, 8), AdaRoundConfig(iters=20))
    bake_rounding_(layer, quantizer, ada)
    assert layer.weight_quantizer is quantizer
    assert torch.equal(quantizer(layer.weight), layer.weight)
    assert not layer.weight.requires_grad or layer.weight.grad is None


MIXED_RULES = (
    ("layer1.0.conv1", LayerConfig(w_bits=2, a_bits=8)),
    ("layer2.0.conv2", LayerConfig(w_bits=3, a_bits=6)),
    ("layer3.0.conv1", LayerConfig(w_bits=None, a_bits=5)),
    ("linear", LayerConfig(w_bits=6, a_bits=None)),
)


@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop"])
def test_methods_keep_each_layers_widths(method, monkeypatch):
    import eaq.methods.adaround as ada_mod
    import eaq.methods.reconstruction as rec_mod

    monkeypatch.setattr(ada_mod, "ADAROUND_ITERS", 3)
    monkeypatch.setattr(rec_mod, "BRECQ_ITERS", 3)
    torch.manual_seed(0)
    model = ResNetCifar(blocks=(1, 1, 1)).eval()
    calib = [(torch.randn(8, 3, 8, 8), torch.zeros(8)) for _ in range(2)]
    plan = Plan(default=LayerConfig(w_bits=4, a_bits=4), rules=MIXED_RULES)
    expected = plan.resolve(quantizable_layers(model))
    summary = quantize_model_(model, plan, calib, method=method)

    for row in summary.layers:
        cfg = expected[row.name]
        assert (row.w_bits, row.a_bits) == (cfg.w_bits, cfg.a_bits), row.name
        layer = model.get_submodule(row.name)
        assert isinstance(layer, QuantConv2d | QuantLinear)
        wq, aq = layer.weight_quantizer, layer.input_quantizer
        if cfg.w_bits is None:
            assert wq is None
        else:
            assert isinstance(wq, Quantizer) and wq.spec.bits == cfg.w_bits
            qmin, qmax = wq._qrange
            assert (qmin, qmax) == (-(2 ** (cfg.w_bits - 1)), 2 ** (cfg.w_bits - 1) - 1)
            assert torch.equal(wq(layer.weight), layer.weight), row.name
            codes = torch.round(layer.weight / wq.scale)
            assert codes.min() >= qmin and codes.max() <= qmax
        if cfg.a_bits is None:
            assert aq is None
        else:
            assert isinstance(aq, Quantizer) and aq.spec.bits == cfg.a_bits
            assert aq.is_calibrated
    assert expected["conv1"].w_bits == 8  # first/last policy still applies to the stem
    with torch.no_grad():
        assert torch.isfinite(model(calib[0][0])).all()


def test_fake_quantize_reference_matches_bake():
    """The baked weight is a fixed point of the plain fake quantizer (idempotence)."""
    torch.manual_seed(2)
    w = torch.randn(3, 7)
    q = _weight_quantizer(w, bits=3)
    ada = AdaRoundWeight(w, q)
    with torch.no_grad():
        ada.alpha.copy_(torch.randn_like(ada.alpha) * 3)
    ada.harden()
    baked = ada(w)
    assert torch.equal(fake_quantize(baked, q.scale, q.zero_point, *q._qrange), baked)


class _FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 4, 1)
        self.tail = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        z = self.head(y)
        return self.tail(z) + z  # head's output has two users: no activation


def test_following_activations_after_folding():
    from eaq.methods.adaround import following_activations
    from eaq.methods.folding import fold_batchnorm_

    model = _FunctionalRelu().eval()
    fold_batchnorm_(model)
    assert set(following_activations(model, ["conv", "head", "tail"])) == {"conv"}
    seq = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4), nn.ReLU6()).eval()
    acts = following_activations(seq, ["0", "2"])
    assert isinstance(acts["0"], nn.GELU) and isinstance(acts["2"], nn.ReLU6)


def test_adaround_loss_is_taken_after_the_activation():
    """Every output of the first layer is far below zero, so after its ReLU there is nothing
    to reconstruct: its error before and after is exactly 0. Without the ReLU it is not."""
    errors = {}
    for act in (nn.ReLU(), nn.Identity()):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), act, nn.Conv2d(8, 4, 1)).eval()
        with torch.no_grad():
            model[0].bias.fill_(-100.0)
        calib = [(correlated(16, 8, 6), None)]
        _, float_model = prepare_(model, Plan.uniform(3, None, first_last_8bit=False), calib)
        stats = adaround_(model, float_model, calib, AdaRoundConfig(iters=20))
        first = next(s for s in stats if s.name == "0")
        errors[type(act).__name__] = (first.error_before, first.error_after)
    assert errors["ReLU"] == (0.0, 0.0)
    assert errors["Identity"][0] > 0.0
