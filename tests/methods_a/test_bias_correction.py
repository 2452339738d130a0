"""Empirical bias correction."""

import copy

import torch
from torch import nn

from eaq.methods import quantize_model_
from eaq.methods.bias_correction import bias_correct_
from eaq.nn import calibrate_, quantize_
from eaq.plan import Plan


def _calib(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape, generator=g) + 0.5, torch.zeros(shape[0])) for _ in range(n)]


def _plan(bits=3):
    return Plan.uniform(bits, None, first_last_8bit=False)  # weights only: the bias comes from W


def test_linear_mean_error_removed_and_mse_drops():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 16)).eval()
    model = copy.deepcopy(ref)
    quantize_(model, _plan())
    calibrate_(model, _calib((64, 32)))
    calib = _calib((64, 32))
    x = torch.cat([b for b, _ in calib])
    with torch.no_grad():
        err_before = model(x) - ref(x)
        bias_correct_(model, ref, calib)
        err_after = model(x) - ref(x)
    assert err_before.mean(0).abs().max() > 1e-3
    assert err_after.mean(0).abs().max() < 1e-5
    assert err_after.square().mean() < err_before.square().mean()


def test_conv_without_bias_gets_one():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model = copy.deepcopy(ref)
    quantize_(model, _plan())
    calib = _calib((8, 4, 8, 8))
    calibrate_(model, calib)
    with torch.no_grad():
        fixes = bias_correct_(model, ref, calib)
        x = torch.cat([b for b, _ in calib])
        err = (model[0](x) - ref[0](x)).mean((0, 2, 3))
    assert set(fixes) == {"0", "2"}
    assert model[0].bias is not None
    assert err.abs().max() < 1e-4


def test_method_runs_on_a_bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model.eval()
    calib = _calib((8, 3, 8, 8), n=2)
    summary = quantize_model_(model, Plan.uniform(4, 8), calib, method="biascorr")
    assert summary.n_quantized == 2
    assert isinstance(model[1], nn.Identity)
    assert torch.isfinite(model(calib[0][0])).all()
