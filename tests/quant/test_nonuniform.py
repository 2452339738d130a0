"""Non-uniform quantizers: log2 and twin uniform, by hand, by property and against uniform."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from eaq.errors import EaqError
from eaq.quant import (
    Log2Quantizer,
    NonUniformQuantizer,
    PerChannel,
    Quantizer,
    QuantSpec,
    TwinUniformQuantizer,
    calibration,
    log2_fake_quantize,
    make_quantizer,
    twin_fake_quantize,
)

settings_ = settings(max_examples=50, deadline=None)


def _softmax_data(seed=0, rows=256, tokens=65) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(rows, tokens, generator=g)).softmax(-1)


def _gelu_data(seed=0, n=20_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return nn.functional.gelu(2.0 * torch.randn(n, generator=g))


# ---------------------------------------------------------------- log2
def test_log2_by_hand():
    q = Log2Quantizer(QuantSpec(4)).calibrate_(torch.tensor([0.2, 1.0]))
    assert float(q.scale) == 1.0 and q.signed is False
    x = torch.tensor([1.0, 0.5, 0.3, 0.0, 0.72, 0.7, 2.0**-14, 2.0**-15, -0.2, 3.0])
    want = torch.tensor([1.0, 0.5, 0.25, 0.0, 1.0, 0.5, 2.0**-14, 0.0, 0.0, 1.0])
    # rounding in the log domain: the midpoint of 1 and 0.5 is 2**-0.5 = 0.707;
    # 2**-15 gets code 15, the code of zero; x <= 0 -> 0; x > s -> s
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)


def test_log2_scale_is_observed_max_and_codes_fit():
    x = _softmax_data()
    q = Log2Quantizer(QuantSpec(3)).calibrate_(x)
    assert float(q.scale) == float(x.max())
    values = q(x).unique()
    assert values.numel() <= 2**3
    assert float(values.min()) == 0.0 and float(values.max()) == pytest.approx(float(x.max()))


@settings_
@given(
    st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=40),
    st.integers(2, 8),
    st.floats(0.05, 4.0),
)
def test_log2_properties(values, bits, s):
    x = torch.tensor([v if v >= 1e-30 else 0.0 for v in values]) * s  # no subnormals
    scale = torch.tensor(s)
    y = log2_fake_quantize(x, scale, bits)
    assert torch.equal(log2_fake_quantize(y, scale, bits), y)  # idempotent
    assert (y >= 0).all() and (y <= s * (1 + 1e-6)).all()
    smallest = s * 2.0 ** -(2**bits - 2)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        if xi >= max(smallest * 2**0.5, 1e-30):  # inside the grid: rel. error <= sqrt(2) - 1
            assert abs(yi - xi) <= (2**0.5 - 1) * xi * (1 + 1e-5)
        else:  # below it: rounded to the smallest value or to 0
            assert 0.0 <= yi <= max(smallest, 1e-30) * 1.5


# ---------------------------------------------------------------- twin
def test_twin_by_hand_unsigned_and_signed():
    d1, d2 = torch.tensor(0.01), torch.tensor(0.08)  # ratio 2**3, 4 bits: 8 codes per range
    x = torch.tensor([0.0, 0.013, 0.07, 0.0749, 0.076, 0.3, 1.0])
    want = torch.tensor([0.0, 0.01, 0.07, 0.07, 0.08, 0.32, 0.56])
    torch.testing.assert_close(twin_fake_quantize(x, d1, d2, 4, signed=False), want)
    x = torch.tensor([-0.2, -0.034, -0.004, 0.0, 0.05, 0.3, 1.0])
    want = torch.tensor([-0.08, -0.03, 0.0, 0.0, 0.08, 0.32, 0.56])
    torch.testing.assert_close(twin_fake_quantize(x, d1, d2, 4, signed=True), want)


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("data", ["softmax", "gelu"])
def test_twin_calibrated_codes_ratio_and_idempotence(bits, data):
    x = _softmax_data() if data == "softmax" else _gelu_data()
    q = TwinUniformQuantizer(QuantSpec(bits)).calibrate_(x)
    assert q.signed is (data == "gelu")
    ratio = float(q.step2 / q.scale)
    assert ratio == 2.0 ** int(q.log2_ratio) and int(q.log2_ratio) >= 0
    y = q(x)
    assert y.unique().numel() <= 2**bits
    assert torch.equal(q(y), y)
    # error bound: half a step of range 2 inside the covered range
    n = 2 ** (bits - 1)
    inside = (x >= -n * float(q.scale)) & (x <= float(q.step2) * (n - 1))
    assert ((y - x).abs()[inside] <= float(q.step2) / 2 + 1e-6).all()


@settings_
@given(
    st.lists(st.floats(-0.25, 3.0, width=32), min_size=1, max_size=40),
    st.integers(2, 8),
    st.integers(0, 6),
    st.booleans(),
)
def test_twin_properties(values, bits, m, signed):
    x = torch.tensor(values)
    d1 = torch.tensor(0.003)
    y = twin_fake_quantize(x, d1, d1 * 2**m, bits, signed)
    assert torch.equal(twin_fake_quantize(y, d1, d1 * 2**m, bits, signed), y)
    n = 2 ** (bits - 1)
    top = float(d1) * 2**m * (n - 1)
    assert (y <= top * (1 + 1e-6)).all()
    if not signed:
        assert (y >= 0).all()


@pytest.mark.parametrize("bits", [4, 6])
def test_twin_beats_uniform_on_softmax(bits):
    x = _softmax_data(1)
    twin = TwinUniformQuantizer(QuantSpec(bits)).calibrate_(x)
    uniform = Quantizer(QuantSpec(bits)).calibrate_(x)
    mse_twin = float((twin(x) - x).pow(2).mean())
    mse_uniform = float((uniform(x) - x).pow(2).mean())
    assert mse_twin < 0.5 * mse_uniform


def test_twin_beats_uniform_on_gelu():
    x = _gelu_data(2)
    twin = TwinUniformQuantizer(QuantSpec(4)).calibrate_(x)
    uniform = Quantizer(QuantSpec(4)).calibrate_(x)
    assert float((twin(x) - x).pow(2).mean()) < float((uniform(x) - x).pow(2).mean())


# ---------------------------------------------------------------- the Quantizer interface
class _Probe(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.q = make_quantizer(QuantSpec(4), kind)

    def forward(self, x):
        return self.q(x)


@pytest.mark.parametrize("kind", ["log2", "twin"])
def test_calibration_context_state_dict_and_ste(kind):
    model = _Probe(kind)
    with pytest.raises(RuntimeError, match="before calibration"):
        model(torch.rand(2, 3))
    assert "uncalibrated" in repr(model.q)
    with calibration(model):
        for seed in range(3):
            model(_softmax_data(seed, rows=8))
    x = _softmax_data(9, rows=8)
    y = model(x)
    assert not torch.equal(y, x) and kind in repr(model.q)
    fresh = _Probe(kind)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), y)
    model.q.enabled = False
    assert torch.equal(model(x), x)
    model.q.enabled = True
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    top = model.q.scale if kind == "log2" else model.q.step2 * 7
    assert torch.equal(xg.grad, (x <= top).float())  # straight through, 0 where clipped
    assert xg.grad.mean() > 0.9


def test_make_quantizer_rejects_bad_kind_and_granularity():
    assert type(make_quantizer(QuantSpec(8))) is Quantizer
    with pytest.raises(EaqError, match="valid: uniform, log2, twin"):
        make_quantizer(QuantSpec(8), "log3")
    with pytest.raises(EaqError, match="per tensor"):
        make_quantizer(QuantSpec(8, granularity=PerChannel(0)), "twin")
    assert math.isfinite(float(Log2Quantizer(QuantSpec(2)).calibrate_(torch.zeros(3)).scale))


def test_the_non_uniform_base_is_abstract():
    with pytest.raises(TypeError, match="_fake_quantize"):
        NonUniformQuantizer(QuantSpec(4))
