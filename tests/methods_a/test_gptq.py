"""GPTQ weight rounding."""

import copy

import pytest
import torch
from torch import nn

from eaq.methods import quantize_model_
from eaq.methods.gptq import gptq_
from eaq.nn import calibrate_, quantize_
from eaq.plan import Plan
from eaq.quant import PerChannel, PerGroup


def _correlated(shape, n=4, seed=0):
    """Inputs with correlated channels (where GPTQ's error feedback pays off)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    mix = torch.randn(c, c, generator=g) / c**0.5 + torch.eye(c)
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=g)
        x = torch.einsum("ij,bj...->bi...", mix, x)
        out.append((x, torch.zeros(shape[0])))
    return out


def _errors(layer_ctor, shape, granularity, bits=3):
    torch.manual_seed(0)
    ref = nn.Sequential(layer_ctor()).eval()
    calib = _correlated(shape)
    plan = Plan.uniform(bits, None, granularity=granularity, first_last_8bit=False)
    rtn, gq = copy.deepcopy(ref), copy.deepcopy(ref)
    quantize_(rtn, plan)
    calibrate_(rtn, calib)
    quantize_(gq, plan)
    names = gptq_(gq, calib)
    x = torch.cat([b for b, _ in calib])
    with torch.no_grad():
        y = ref(x)
        e_rtn = (rtn(x) - y).square().mean().item()
        e_gptq = (gq(x) - y).square().mean().item()
        w = gq[0].weight.detach().clone()
        idempotent = torch.equal(gq[0].weight_quantizer(w), w)
    return names, e_rtn, e_gptq, idempotent


@pytest.mark.parametrize("granularity", [PerChannel(0), PerGroup(16)])
def test_linear_beats_round_to_nearest(granularity):
    names, e_rtn, e_gptq, idem = _errors(lambda: nn.Linear(64, 16), (128, 64), granularity)
    assert names == ["0"]
    assert e_gptq < 0.8 * e_rtn
    assert idem


def test_conv_beats_round_to_nearest():
    names, e_rtn, e_gptq, idem = _errors(
        lambda: nn.Conv2d(8, 8, 3, padding=1), (8, 8, 8, 8), PerChannel(0)
    )
    assert names == ["0"]
    assert e_gptq < 0.8 * e_rtn
    assert idem


def test_method_on_a_small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8)
    ).eval()
    calib = _correlated((4, 3, 8, 8), n=2)
    summary = quantize_model_(model, Plan.uniform(4, 8), calib, method="gptq")
    assert summary.n_quantized == 2
    assert torch.isfinite(model(calib[0][0])).all()
