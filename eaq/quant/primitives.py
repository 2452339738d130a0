"""Pure quantization numerics: integer ranges, parameter choice, (fake) quantization.

Everything here is a stateless function of tensors; observers, quantizers and layers call these.
Scales and zero points broadcast against the tensor they describe: 0-d for per-tensor, the keepdim
``scale_shape`` otherwise (see :mod:`eaq.quant.granularity`).

The rounding formula matches PyTorch's CPU/CUDA ``fake_quantize_per_{tensor,channel}_affine``
kernels bit for bit (checked empirically, see ``tests/quant/test_primitives.py``)::

    q     = clamp(round_half_even(x * (1 / scale)) + zero_point, quant_min, quant_max)
    x_hat = (q - zero_point) * scale

i.e. the input is multiplied by the float32 reciprocal of the scale (not divided by the scale) and
the integer zero point is added *after* rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eaq.errors import EaqError

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "quant_range",
    "quantize",
]

MIN_BITS, MAX_BITS = 2, 16
_EPS = torch.finfo(torch.float32).eps


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """Return the integer range ``(quant_min, quant_max)`` of a ``bits``-bit code.

    Args:
        bits: Bit width, an integer in ``MIN_BITS..MAX_BITS``.
        signed: Two's-complement range if True, else ``0..2**bits - 1``.

    Raises:
        EaqError: If ``bits`` is not an integer in 2..16.

    Examples:
        >>> quant_range(8, signed=True)
        (-128, 127)
        >>> quant_range(4, signed=False)
        (0, 15)
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise EaqError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def choose_qparams(
    min_val: Tensor, max_val: Tensor, bits: int, *, symmetric: bool, signed: bool
) -> tuple[Tensor, Tensor]:
    """Choose scale and zero point that cover ``[min_val, max_val]``.

    ==================  ==========================================  ===========================
    mode                scale                                       zero point
    ==================  ==========================================  ===========================
    symmetric, signed   ``max(|min|, |max|) / (2**(b-1) - 1)``      0
    symmetric, unsigned ``max(max, 0) / (2**b - 1)``                0
    affine              ``(max' - min') / (qmax - qmin)``           ``qmin - round(min' / s)``
    ==================  ==========================================  ===========================

    In the affine case the range is first widened to include 0 (``min' = min(min, 0)``,
    ``max' = max(max, 0)``) and the zero point is clamped to ``[qmin, qmax]``. Scales are floored
    at ``torch.finfo(torch.float32).eps`` so all-zero blocks work.

    Args:
        min_val: Per-block minimum (any shape).
        max_val: Per-block maximum, same shape as ``min_val``.
        bits: Bit width (2..16).
        symmetric: Symmetric (zero point 0) or affine.
        signed: Signed or unsigned integer range.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors shaped like ``min_val``.

    Examples:
        >>> s, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(2.54), 8,
        ...                        symmetric=True, signed=True)
        >>> round(float(s), 4), int(zp)
        (0.02, 0)
        >>> s, zp = choose_qparams(torch.tensor(0.0), torch.tensor(2.55), 8,
        ...                        symmetric=False, signed=False)
        >>> round(float(s), 4), int(zp)
        (0.01, 0)
    """
    qmin, qmax = quant_range(bits, signed)
    min_val = torch.as_tensor(min_val).to(torch.float32)
    max_val = torch.as_tensor(max_val).to(torch.float32)
    zero = torch.zeros((), dtype=torch.float32, device=min_val.device)
    min_neg = torch.minimum(min_val, zero)
    max_pos = torch.maximum(max_val, zero)
    if symmetric:
        if signed:
            scale = torch.maximum(-min_neg, max_pos) / float(qmax)
        else:
            scale = max_pos / float(qmax)
        scale = scale.clamp(min=_EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((max_pos - min_neg) / float(qmax - qmin)).clamp(min=_EPS)
        zero_point = (qmin - torch.round(min_neg / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zero_point


def _fake_quantize_impl(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, need_mask: bool
) -> tuple[Tensor, Tensor | None]:
    """Fake-quantize with at most four elementwise passes; optionally the in-range mask.

    ``clamp(r + zp, qmin, qmax) - zp == clamp(r, qmin - zp, qmax - zp)`` exactly because ``r`` and
    ``zp`` are integers well inside float32's exact range (checked against torch in the tests).
    """
    dtype = x.dtype
    xf = x if dtype == torch.float32 else x.float()
    scale = scale.to(device=x.device, dtype=torch.float32)
    zp = zero_point.to(device=x.device, dtype=torch.float32)
    lo, hi = quant_min - zp, quant_max - zp
    r = torch.mul(xf, torch.reciprocal(scale))
    r.round_()
    mask = None
    if need_mask:
        mask = (r >= lo) & (r <= hi)
    if lo.ndim == 0 and lo.device.type == "cpu":  # python bounds: a faster kernel, no sync
        r.clamp_(float(lo), float(hi))
    else:
        torch.clamp(r, lo, hi, out=r)
    r.mul_(scale)
    return (r if dtype == torch.float32 else r.to(dtype)), mask


class _FakeQuantizeSTE(torch.autograd.Function):
    """Fake quantization with torch's straight-through gradient (zero outside the range)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min, quant_max):  # noqa: D102
        out, mask = _fake_quantize_impl(
            x, scale, zero_point, quant_min, quant_max, need_mask=ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None, None, None, None


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tensor:
    """Quantize and dequantize ``x`` in one step (``dequantize(quantize(x))``).

    Bit-for-bit equal to ``torch.fake_quantize_per_tensor_affine`` /
    ``torch.fake_quantize_per_channel_affine`` for the same parameters; rounds half to even.
    The gradient is straight-through where ``round(x / scale) + zero_point`` lies inside
    ``[quant_min, quant_max]`` and zero outside, as in torch.

    Args:
        x: Floating-point input.
        scale: Float scale broadcastable against ``x`` (0-d per tensor, keepdim shape otherwise).
        zero_point: Integer zero point, same shape as ``scale``.
        quant_min: Smallest integer code.
        quant_max: Largest integer code.

    Returns:
        A tensor like ``x`` whose values lie on the quantization grid.

    Examples:
        >>> x = torch.tensor([-1.0, 0.26, 0.25, 3.0])
        >>> fake_quantize(x, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), -2, 1)
        tensor([-1.0000,  0.5000,  0.0000,  0.5000])
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return _fake_quantize_impl(x, scale, zero_point, quant_min, quant_max, False)[0]
    return _FakeQuantizeSTE.apply(x, scale, zero_point, int(quant_min), int(quant_max))


def quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tensor:
    """Return the int32 codes ``clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max)``.

    Examples:
        >>> quantize(torch.tensor([-1.0, 0.26, 3.0]), torch.tensor(0.5),
        ...          torch.tensor(1, dtype=torch.int32), 0, 3)
        tensor([0, 2, 3], dtype=torch.int32)
    """
    scale = scale.to(device=x.device, dtype=torch.float32)
    zp = zero_point.to(device=x.device, dtype=torch.float32)
    q = torch.round(x.float() * torch.reciprocal(scale)) + zp
    return q.clamp_(quant_min, quant_max).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Return the float32 values ``(q - zero_point) * scale`` of integer codes ``q``.

    Examples:
        >>> dequantize(torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor(0.5),
        ...            torch.tensor(1, dtype=torch.int32))
        tensor([-0.5000,  0.5000,  1.0000])
    """
    scale = scale.to(device=q.device, dtype=torch.float32)
    zp = zero_point.to(device=q.device, dtype=torch.float32)
    return (q.float() - zp) * scale
