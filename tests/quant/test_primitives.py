import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eaq.errors import EaqError
from eaq.quant.granularity import PerChannel, PerGroup, reduce_blocks
from eaq.quant.primitives import (
    MAX_BITS,
    MIN_BITS,
    choose_qparams,
    dequantize,
    fake_quantize,
    quant_range,
    quantize,
)

EPS = torch.finfo(torch.float32).eps

# (bits, signed) -> torch range: (-128, 127), (0, 255), (-64, 63), (0, 15), (-32, 31), (-8, 7)
RANGES = [(8, True), (8, False), (7, True), (4, False), (6, True), (4, True), (2, True)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _data(n=4000, seed=0):
    """Gaussian data plus values at exact grid points and half-steps of a likely scale."""
    x = torch.randn(n, generator=_gen(seed)) * 2.0
    return x


def _with_half_steps(x, scale, zero_point, qmin, qmax):
    """Append values exactly at half-steps k + 0.5 (k across and beyond the range) and on grid."""
    s = float(scale)
    k = torch.arange(qmin - 3, qmax + 3, dtype=torch.float32) - float(zero_point)
    extra = torch.cat([(k + 0.5) * s, k * s, (k + 0.5).mul(s).nextafter(torch.tensor(math.inf))])
    return torch.cat([x, extra])


def test_quant_range_table():
    assert quant_range(8, True) == (-128, 127)
    assert quant_range(8, False) == (0, 255)
    assert quant_range(4, True) == (-8, 7)
    assert quant_range(2, False) == (0, 3)
    assert quant_range(16, True) == (-32768, 32767)
    assert (MIN_BITS, MAX_BITS) == (2, 16)


@pytest.mark.parametrize("bits", [1, 17, 0, -8, 8.0, "8", True, None])
def test_bad_bits(bits):
    with pytest.raises(EaqError, match=r"2\.\.16") as info:
        quant_range(bits, True)
    assert repr(bits) in str(info.value)
    with pytest.raises(EaqError):
        choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), bits, symmetric=True, signed=True)


def test_choose_qparams_by_hand():
    lo, hi = torch.tensor([-1.0, -3.0, 0.5]), torch.tensor([2.54, 1.0, 2.0])
    s, zp = choose_qparams(lo, hi, 8, symmetric=True, signed=True)
    torch.testing.assert_close(s, torch.tensor([2.54, 3.0, 2.0]) / 127)
    assert zp.dtype == torch.int32 and s.dtype == torch.float32 and s.shape == lo.shape
    assert torch.equal(zp, torch.zeros(3, dtype=torch.int32))
    s, zp = choose_qparams(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=True, signed=False)
    torch.testing.assert_close(s, torch.tensor(0.01))
    s, zp = choose_qparams(lo, hi, 8, symmetric=False, signed=False)
    # range widened to include 0: [0.5, 2] -> [0, 2]
    torch.testing.assert_close(s, torch.tensor([3.54, 4.0, 2.0]) / 255)
    expected_zp = (0 - torch.round(torch.tensor([-1.0, -3.0, 0.0]) / s)).clamp(0, 255)
    assert torch.equal(zp, expected_zp.int())
    s, zp = choose_qparams(lo, hi, 8, symmetric=False, signed=True)
    assert torch.equal(zp, (-128 - torch.round(torch.tensor([-1.0, -3.0, 0.0]) / s)).int())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("signed", [True, False])
def test_all_zero_block_has_eps_scale(symmetric, signed):
    s, zp = choose_qparams(torch.zeros(3), torch.zeros(3), 8, symmetric=symmetric, signed=signed)
    assert torch.equal(s, torch.full((3,), EPS))
    qmin, qmax = quant_range(8, signed)
    out = fake_quantize(torch.zeros(3), s, zp, qmin, qmax)
    assert torch.equal(out, torch.zeros(3))


# ---------------------------------------------------------------- oracle: torch's kernels
@pytest.mark.parametrize(("bits", "signed"), RANGES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_tensor_equals_torch(bits, signed, symmetric, seed):
    qmin, qmax = quant_range(bits, signed)
    x = _data(seed=seed) + (1.0 if seed else 0.0)
    lo, hi = x.min(), x.max()
    if not signed and symmetric:
        x = x.abs()
        lo, hi = x.min(), x.max()
    s, zp = choose_qparams(lo, hi, bits, symmetric=symmetric, signed=signed)
    x = _with_half_steps(x, s, zp, qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s), int(zp), qmin, qmax)
    assert torch.equal(fake_quantize(x, s, zp, qmin, qmax), ref)
    # torch's tensor-qparams overload as well
    ref_t = torch.fake_quantize_per_tensor_affine(x, s, zp, qmin, qmax)
    assert torch.equal(ref, ref_t)
    # codes: dequantize(quantize(x)) is the same value
    assert torch.equal(dequantize(quantize(x, s, zp, qmin, qmax), s, zp), ref)


@pytest.mark.parametrize(("bits", "signed"), RANGES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("shape", "axis"), [((16, 40), 0), ((4, 8, 5, 5), 1), ((3, 6, 7), -1)])
def test_per_channel_equals_torch(bits, signed, symmetric, shape, axis):
    qmin, qmax = quant_range(bits, signed)
    g = _gen(bits)
    x = torch.randn(shape, generator=g)
    ax = axis % x.ndim
    bshape = [1] * x.ndim
    bshape[ax] = shape[ax]
    x = x * torch.rand(bshape, generator=g).mul(3).add(0.1) + torch.randn(bshape, generator=g)
    if not signed and symmetric:
        x = x.abs()
    gran = PerChannel(axis)
    s, zp = choose_qparams(
        reduce_blocks(x, gran, "amin"),
        reduce_blocks(x, gran, "amax"),
        bits,
        symmetric=symmetric,
        signed=signed,
    )
    assert s.shape == tuple(bshape)
    # replace a third of the values by exact half-steps and a third by grid points
    k = torch.randint(qmin - 2, qmax + 2, x.shape, generator=g).float() - zp
    pick = torch.randint(0, 3, x.shape, generator=g)
    x = torch.where(pick == 0, (k + 0.5) * s, torch.where(pick == 1, k * s, x))
    ref = torch.fake_quantize_per_channel_affine(x, s.reshape(-1), zp.reshape(-1), ax, qmin, qmax)
    assert torch.equal(fake_quantize(x, s, zp, qmin, qmax), ref)


def test_per_group_equals_torch_per_channel_on_reshaped_weight():
    w = torch.randn(8, 64, generator=_gen(3))
    gran = PerGroup(16)
    s, zp = choose_qparams(
        reduce_blocks(w, gran, "amin"),
        reduce_blocks(w, gran, "amax"),
        4,
        symmetric=False,
        signed=True,
    )
    assert s.shape == (8, 4)
    rows = w.reshape(32, 16)
    ref = torch.fake_quantize_per_channel_affine(rows, s.reshape(-1), zp.reshape(-1), 0, -8, 7)
    s_full = s.repeat_interleave(16, dim=1)
    zp_full = zp.repeat_interleave(16, dim=1)
    assert torch.equal(fake_quantize(w, s_full, zp_full, -8, 7), ref.reshape(8, 64))
    # broadcasting keepdim-group scale against a [out, groups, size] view is the same
    out = fake_quantize(w.reshape(8, 4, 16), s[..., None], zp[..., None], -8, 7)
    assert torch.equal(out.reshape(8, 64), ref.reshape(8, 64))


@pytest.mark.parametrize(("bits", "signed"), [(8, True), (8, False), (4, False), (6, True)])
def test_gradients_equal_torch(bits, signed):
    qmin, qmax = quant_range(bits, signed)
    g = _gen(bits)
    x0 = torch.randn(4, 6, 10, generator=g) * 2
    s, zp = choose_qparams(
        torch.tensor(-1.0), torch.tensor(1.5), bits, symmetric=False, signed=signed
    )
    x0 = torch.cat([x0.reshape(-1), _with_half_steps(torch.empty(0), s, zp, qmin, qmax)])
    up = torch.randn(x0.shape, generator=g)

    x, xr = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    fake_quantize(x, s, zp, qmin, qmax).backward(up)
    torch.fake_quantize_per_tensor_affine(xr, float(s), int(zp), qmin, qmax).backward(up)
    assert torch.equal(x.grad, xr.grad)
    assert 0 < int((x.grad == 0).sum()) < x.numel()  # both in- and out-of-range values

    xc = torch.randn(6, 50, generator=g) * 3
    sc = torch.rand(6, 1, generator=g) * 0.05 + 0.01
    zc = torch.randint(qmin, qmax + 1, (6, 1), generator=g).int()
    x, xr = xc.clone().requires_grad_(), xc.clone().requires_grad_()
    up = torch.randn(xc.shape, generator=g)
    fake_quantize(x, sc, zc, qmin, qmax).backward(up)
    ref = torch.fake_quantize_per_channel_affine(xr, sc.reshape(-1), zc.reshape(-1), 0, qmin, qmax)
    ref.backward(up)
    assert torch.equal(x.grad, xr.grad)


def test_grad_and_no_grad_paths_agree_and_input_untouched():
    x = torch.randn(100, generator=_gen(5))
    x_copy = x.clone()
    s, zp = torch.tensor(0.03), torch.tensor(-5, dtype=torch.int32)
    a = fake_quantize(x, s, zp, -128, 127)
    b = fake_quantize(x.clone().requires_grad_(), s, zp, -128, 127)
    assert torch.equal(a, b.detach())
    assert torch.equal(x, x_copy)
    assert b.requires_grad


def test_half_precision_input_keeps_dtype():
    x = torch.randn(50, generator=_gen(6))
    s, zp = torch.tensor(0.05), torch.tensor(0, dtype=torch.int32)
    out = fake_quantize(x.half(), s, zp, -128, 127)
    assert out.dtype == torch.float16
    ref = torch.fake_quantize_per_tensor_affine(x.half().float(), 0.05, 0, -128, 127)
    assert torch.equal(out, ref.half())


# ---------------------------------------------------------------- properties
floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
settings_ = settings(max_examples=60, deadline=None)


def _qparams(x, bits, symmetric, signed):
    x = torch.tensor(x, dtype=torch.float32)
    if not signed:
        x = x.abs()
    s, zp = choose_qparams(x.min(), x.max(), bits, symmetric=symmetric, signed=signed)
    return x, s, zp, *quant_range(bits, signed)


@settings_
@given(
    st.lists(floats, min_size=1, max_size=64),
    st.integers(MIN_BITS, MAX_BITS),
    st.booleans(),
    st.booleans(),
    st.floats(0.2, 1.5),
)
def test_output_on_grid_and_in_range(values, bits, symmetric, signed, shrink):
    x, s, zp, qmin, qmax = _qparams(values, bits, symmetric, signed)
    s = s * shrink  # also exercise clipping
    y = fake_quantize(x * 1.0, s, zp, qmin, qmax)
    codes = y / s + zp.float()
    # y / s carries float32 rounding: relative 1e-7 of the code (up to 65535 at 16 bits)
    assert bool(((codes - codes.round()).abs() <= 1e-3 + 1e-6 * codes.abs()).all())
    assert int(codes.round().min()) >= qmin and int(codes.round().max()) <= qmax
    assert bool((y >= s * (qmin - zp)).all()) and bool((y <= s * (qmax - zp)).all())
    assert torch.equal(dequantize(quantize(x, s, zp, qmin, qmax), s, zp), y)


@settings_
@given(
    st.lists(floats, min_size=1, max_size=64),
    st.integers(MIN_BITS, MAX_BITS),
    st.booleans(),
    st.booleans(),
    st.floats(0.2, 1.5),
)
def test_idempotent(values, bits, symmetric, signed, shrink):
    x, s, zp, qmin, qmax = _qparams(values, bits, symmetric, signed)
    s = s * shrink
    y = fake_quantize(x, s, zp, qmin, qmax)
    assert torch.equal(fake_quantize(y, s, zp, qmin, qmax), y)


@settings_
@given(
    st.lists(floats, min_size=1, max_size=64),
    st.integers(MIN_BITS, MAX_BITS),
    st.booleans(),
    st.booleans(),
    st.floats(0.2, 1.5),
)
def test_error_at_most_half_step_inside_clipping_range(values, bits, symmetric, signed, shrink):
    x, s, zp, qmin, qmax = _qparams(values, bits, symmetric, signed)
    s = s * shrink
    y = fake_quantize(x, s, zp, qmin, qmax)
    lo, hi = s * (qmin - zp), s * (qmax - zp)
    inside = (x >= lo) & (x <= hi)
    tol = 1e-6 * x.abs().max() + 1e-3 * s
    assert bool(((y - x).abs()[inside] <= s / 2 + tol).all())
    # outside the range the value clips to the nearest end
    assert bool((y[x > hi] == y.max()).all()) and bool((y[x < lo] == y.min()).all())


@settings_
@given(
    st.lists(floats, min_size=1, max_size=64),
    st.integers(MIN_BITS, MAX_BITS - 1),
    st.booleans(),
    st.booleans(),
)
def test_minmax_error_bound_shrinks_with_bits(values, bits, symmetric, signed):
    x, s, zp, qmin, qmax = _qparams(values, bits, symmetric, signed)
    x2, s2, zp2, qmin2, qmax2 = _qparams(values, bits + 1, symmetric, signed)
    err2 = (fake_quantize(x2, s2, zp2, qmin2, qmax2) - x2).abs().max()
    tol = 1e-6 * x.abs().max() + 1e-3 * s
    # with min-max qparams nothing clips, so the b+1 error is within half a step of b+1, which is
    # less than half a step of b: the worst-case error does not grow with bits
    assert bool(s2 <= s)
    assert bool(err2 <= s2 / 2 + tol)


def test_minmax_max_error_does_not_grow_on_dense_data():
    x = torch.randn(20000, generator=_gen(7)) * 3
    for symmetric in (True, False):
        errors = []
        for bits in range(MIN_BITS, MAX_BITS + 1):
            s, zp = choose_qparams(x.min(), x.max(), bits, symmetric=symmetric, signed=True)
            qmin, qmax = quant_range(bits, True)
            errors.append(float((fake_quantize(x, s, zp, qmin, qmax) - x).abs().max()))
        assert all(b <= a for a, b in zip(errors, errors[1:], strict=False)), errors


def test_max_error_can_grow_for_particular_points():
    """Why the property above is stated as a bound: 1.0 is on the 3-bit grid of [-3, 3] only."""
    x = torch.tensor([3.0, 1.0])
    err = {}
    for bits in (3, 4):
        s, zp = choose_qparams(x.min(), x.max(), bits, symmetric=True, signed=True)
        err[bits] = float((fake_quantize(x, s, zp, *quant_range(bits, True)) - x).abs().max())
    assert err[3] == 0.0 < err[4]
