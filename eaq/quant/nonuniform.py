"""Non-uniform activation quantizers for Vision Transformers: log2 and twin uniform.

Post-softmax values crowd near 0 inside ``[0, 1]`` and post-GELU values are skewed (a short
negative tail down to about -0.17, a long positive one), so one uniform grid wastes most of its
codes. Two quantizers from the ViT PTQ literature fix that; both are
:class:`~eaq.quant.Quantizer` subclasses, so :func:`~eaq.quant.calibration`, ``state_dict``,
``enabled`` and :meth:`~eaq.quant.Quantizer.calibrate_` work as for the uniform one.

``log2`` (FQ-ViT, Lin et al. 2022, "Log-Int-Softmax"; RepQ-ViT, Li et al. 2023), for
post-softmax values, with a ``b``-bit code ``q`` and scale ``s`` (buffer ``scale``)::

    q     = clamp(round(-log2(x / s)), 0, 2**b - 1)
    x_hat = s * 2**-q         if q < 2**b - 1
            0                 if q == 2**b - 1   (so x <= 0 and exact zeros stay 0)

``s`` is the observed maximum (the spec's observer's range; about 1.0 after a softmax).

``twin`` (twin uniform, PTQ4ViT, Yuan et al., ECCV 2022, Sec. 4.1): two uniform ``(b-1)``-bit
ranges share the ``b``-bit code; one bit says which. Steps ``d1 = scale`` and
``d2 = d1 * 2**log2_ratio`` (a power-of-two ratio, as the paper requires so that hardware can
align the two ranges with a shift); ``n = 2**(b-1)``:

==================  =======================================  ====================================
data (auto sign)    range 1 (step ``d1``)                    range 2 (step ``d2``)
==================  =======================================  ====================================
unsigned (softmax)  ``x`` with ``round(x / d1) <= n - 1``:   the rest:
                    ``clamp(round(x / d1), 0, n-1) * d1``    ``clamp(round(x / d2), 0, n-1) * d2``
signed (GELU)       ``x < 0``:                               ``x >= 0``:
                    ``clamp(round(x / d1), -n, 0) * d1``     ``clamp(round(x / d2), 0, n-1) * d2``
==================  =======================================  ====================================

So at most ``2**b`` distinct values. The unsigned case's range 1 is the paper's
``R1 = [0, n * d1)`` up to its last half step, which range 2 represents better. The sign is
chosen at calibration like the uniform quantizer's (``signed=None``: signed iff the observed
minimum is < 0).

Calibration of ``twin`` (a plain grid search, minimising the mean squared error on a bounded
sample of the calibration activations, instead of PTQ4ViT's Hessian-guided metric): for
``gamma`` in :data:`TWIN_GAMMAS` and ``m`` in ``0..``:data:`TWIN_MAX_LOG2_RATIO`,
``d2 = gamma * max(x) / (n - 1)`` and ``d1 = d2 / 2**m``; the pair with the lowest error wins
(ties: the first, i.e. larger ``gamma``, smaller ``m``).

Both use a straight-through gradient: identity inside the representable range, zero where the
input is clipped at the top (like :func:`~eaq.quant.fake_quantize`).

Examples:
    >>> q = Log2Quantizer(QuantSpec(4)).calibrate_(torch.tensor([1.0]))
    >>> q(torch.tensor([1.0, 0.5, 0.3, 0.0]))
    tensor([1.0000, 0.5000, 0.2500, 0.0000])
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import Tensor

from eaq.errors import EaqError, choices_hint
from eaq.quant.granularity import PerTensor
from eaq.quant.observers import MSEObserver
from eaq.quant.primitives import quant_range
from eaq.quant.quantizer import Quantizer, QuantSpec

__all__ = [
    "QUANTIZER_KINDS",
    "TWIN_GAMMAS",
    "TWIN_MAX_LOG2_RATIO",
    "Log2Quantizer",
    "NonUniformQuantizer",
    "TwinUniformQuantizer",
    "log2_fake_quantize",
    "make_quantizer",
    "twin_fake_quantize",
    "twin_search",
]

QUANTIZER_KINDS = ("uniform", "log2", "twin")
TWIN_GAMMAS = tuple(1.0 - 0.05 * i for i in range(12))  # 1.0 down to 0.45
TWIN_MAX_LOG2_RATIO = 12
TWIN_SAMPLES = 2**16  # calibration values kept for the twin search
_EPS = torch.finfo(torch.float32).eps


def _ste(x: Tensor, x_hat: Tensor, upper: Tensor | None) -> Tensor:
    """``x_hat`` with a straight-through gradient to ``x`` (zero where ``x > upper``)."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return x_hat
    through = x if upper is None else torch.where(x <= upper, x, x.detach())
    return through + (x_hat - through).detach()


def log2_fake_quantize(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Log2 fake quantization (see the module docstring); no gradient handling.

    Args:
        x: Input (values <= 0 map to 0).
        scale: 0-d scale ``s``: the largest representable value.
        bits: Code width; ``2**bits - 1`` is the code of 0.

    Examples:
        >>> log2_fake_quantize(torch.tensor([0.7, 0.1, -1.0]), torch.tensor(1.0), 3)
        tensor([0.5000, 0.1250, 0.0000])
    """
    qmax = 2**bits - 1
    xf = x.float()
    s = scale.to(device=x.device, dtype=torch.float32)
    ratio = torch.where(xf > 0, xf / s, torch.ones_like(xf))
    q = torch.round(-torch.log2(ratio)).clamp_(0, qmax)
    q = torch.where(xf > 0, q, torch.full_like(q, qmax))
    out = torch.where(q < qmax, s * torch.exp2(-q), torch.zeros_like(xf))
    return out.to(x.dtype)


def twin_fake_quantize(x: Tensor, d1: Tensor, d2: Tensor, bits: int, signed: bool) -> Tensor:
    """Twin-uniform fake quantization (see the module docstring); no gradient handling.

    Args:
        x: Input.
        d1: 0-d step of range 1 (small values, or the negatives when ``signed``).
        d2: 0-d step of range 2.
        bits: Total code width (each range has ``bits - 1`` bits).
        signed: GELU-style (range 1 for ``x < 0``) or softmax-style (both ranges from 0).

    Examples:
        >>> twin_fake_quantize(torch.tensor([0.01, 0.03, 0.6]), torch.tensor(0.01),
        ...                    torch.tensor(0.16), 4, signed=False)
        tensor([0.0100, 0.0300, 0.6400])
    """
    n = 2 ** (bits - 1)
    xf = x.float()
    d1 = d1.to(device=x.device, dtype=torch.float32)
    d2 = d2.to(device=x.device, dtype=torch.float32)
    r1 = torch.round(xf / d1)
    r2 = torch.round(xf / d2).clamp_(0, n - 1) * d2
    if signed:
        out = torch.where(xf < 0, r1.clamp(-n, 0) * d1, r2)
    else:
        out = torch.where(r1 <= n - 1, r1.clamp(0, n - 1) * d1, r2)
    return out.to(x.dtype)


class NonUniformQuantizer(Quantizer, metaclass=ABCMeta):
    """Base of the non-uniform activation quantizers: per tensor, zero point 0.

    Keeps :class:`~eaq.quant.Quantizer`'s buffers (``scale`` is the quantizer's base step and
    the only parameter a scale search needs to multiply) and its calibration protocol;
    subclasses implement :meth:`_fake_quantize` (abstract: the base cannot be made) and
    :meth:`finish_calibration`.

    Args:
        spec: Bits, sign (None: chosen at calibration) and observer; must be per tensor.
    """

    kind = "nonuniform"

    def __init__(self, spec: QuantSpec) -> None:
        if isinstance(spec, QuantSpec) and not isinstance(spec.granularity, PerTensor):
            raise EaqError(f"the {self.kind} quantizer is per tensor, got {spec.granularity!r}")
        super().__init__(spec)

    def _set_params(self, scale: Tensor, signed: bool) -> None:
        qmin, qmax = quant_range(self.spec.bits, signed)
        device = self.quant_min.device
        self.scale = scale.reshape(()).to(device=device, dtype=torch.float32).clamp(min=_EPS)
        self.zero_point = torch.zeros((), dtype=torch.int32, device=device)
        self.quant_min.fill_(qmin)
        self.quant_max.fill_(qmax)
        self._qrange = (qmin, qmax)
        self.observer = None
        self.calibrating = False

    @abstractmethod
    def _fake_quantize(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` with the calibrated parameters."""

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x``; identity when disabled, observe and pass through if calibrating."""
        if not self.enabled:
            return x
        if self.calibrating:
            self.observer.update(x.detach())
            return x
        if not self.is_calibrated:
            raise RuntimeError(
                f"{type(self).__name__} used before calibration: run the model inside "
                "eaq.quant.calibration(), call calibrate_(), or load a calibrated state_dict"
            )
        return self._fake_quantize(x)

    def _repr_parts(self) -> list[str]:
        signed = self.signed
        sign = "signed=auto" if signed is None else ("signed" if signed else "unsigned")
        return [f"{self.kind}", f"bits={self.spec.bits}", sign]

    def extra_repr(self) -> str:
        parts = self._repr_parts()
        if not self.enabled:
            parts.append("disabled")
        if not self.is_calibrated:
            parts.append("uncalibrated")
        return ", ".join(parts)


class Log2Quantizer(NonUniformQuantizer):
    """Log2 quantizer for post-softmax values in ``[0, s]`` (see the module docstring).

    Always unsigned (codes ``0..2**bits - 1``); ``scale`` holds ``s``, the observed maximum.
    """

    kind = "log2"

    def finish_calibration(self) -> None:
        """Set ``s`` to the observer's maximum and drop the observer."""
        if self.observer is None:
            raise RuntimeError("finish_calibration() without start_calibration()")
        _, hi = self.observer.min_max()
        self._set_params(hi.detach().float().amax(), signed=False)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        out = log2_fake_quantize(x, self.scale, self.spec.bits)
        return _ste(x, out, self.scale)

    def _repr_parts(self) -> list[str]:
        parts = [self.kind, f"bits={self.spec.bits}"]
        if self.is_calibrated:
            parts.append(f"s={float(self.scale):.4g}")
        return parts


class TwinUniformQuantizer(NonUniformQuantizer):
    """Twin-uniform quantizer (PTQ4ViT) for post-softmax or post-GELU values.

    Buffers beyond :class:`~eaq.quant.Quantizer`'s: ``log2_ratio`` (0-d int64, ``m``), so
    ``d1 = scale`` and ``d2 = scale * 2**m``. The integer range (``quant_min``, ``quant_max``)
    is the full ``b``-bit one, signed for GELU-style data.
    """

    kind = "twin"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.register_buffer("log2_ratio", torch.zeros((), dtype=torch.int64))
        self._ratio = 1.0  # python copy of 2**log2_ratio: no device sync per call

    @property
    def step2(self) -> Tensor:
        """``d2 = scale * 2**log2_ratio``."""
        return self.scale * self._ratio

    def start_calibration(self) -> None:
        """Enter calibrating mode; the observer keeps min, max and a bounded sample."""
        self.observer = MSEObserver(PerTensor(), max_samples=TWIN_SAMPLES)
        self.calibrating = True

    def finish_calibration(self) -> None:
        """Grid-search ``(d1, m)`` on the observed sample (see the module docstring)."""
        if self.observer is None:
            raise RuntimeError("finish_calibration() without start_calibration()")
        lo, hi = self.observer.min_max()
        signed = self.spec.signed
        if signed is None:
            signed = bool(lo.amin() < 0)
        d1, m = twin_search(self.observer.sample.reshape(-1), self.spec.bits, signed, hi.amax())
        self.log2_ratio.fill_(m)
        self._ratio = float(2**m)
        self._set_params(d1, signed)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        signed = self._qrange[0] < 0
        out = twin_fake_quantize(x, self.scale, self.step2, self.spec.bits, signed)
        upper = self.step2 * (2 ** (self.spec.bits - 1) - 1)
        return _ste(x, out, upper)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ratio = float(2 ** int(self.log2_ratio))

    def _repr_parts(self) -> list[str]:
        parts = super()._repr_parts()
        if self.is_calibrated:
            d1 = float(self.scale)
            parts += [f"d1={d1:.4g}", f"d2={d1 * self._ratio:.4g}"]
        return parts


@torch.no_grad()
def twin_search(
    sample: Tensor,
    bits: int,
    signed: bool,
    x_max: Tensor | float,
    gammas: tuple[float, ...] = TWIN_GAMMAS,
    max_log2_ratio: int = TWIN_MAX_LOG2_RATIO,
) -> tuple[Tensor, int]:
    """The MSE-best ``(d1, m)`` of a twin-uniform quantizer on ``sample``.

    Candidates: ``d2 = gamma * x_max / (2**(bits-1) - 1)`` for ``gamma`` in ``gammas``,
    ``d1 = d2 / 2**m`` for ``m`` in ``0..max_log2_ratio``.

    Returns:
        ``(d1, m)``: a 0-d float32 tensor and an int.
    """
    n = 2 ** (bits - 1)
    x = sample.float().flatten()
    top = torch.as_tensor(x_max, dtype=torch.float32, device=x.device).clamp(min=_EPS)
    best: tuple[float, Tensor, int] | None = None
    for gamma in gammas:
        d2 = (gamma * top / max(n - 1, 1)).clamp(min=_EPS)
        for m in range(max_log2_ratio + 1):
            d1 = (d2 / 2**m).clamp(min=_EPS)
            err = float((twin_fake_quantize(x, d1, d1 * 2**m, bits, signed) - x).pow(2).mean())
            if best is None or err < best[0]:
                best = (err, d1, m)
    return best[1], best[2]


_KINDS: dict[str, type[Quantizer]] = {
    "uniform": Quantizer,
    "log2": Log2Quantizer,
    "twin": TwinUniformQuantizer,
}


def make_quantizer(spec: QuantSpec | None, kind: str = "uniform") -> Quantizer | None:
    """A quantizer of ``kind`` (:data:`QUANTIZER_KINDS`) for ``spec``; None for a None spec.

    Examples:
        >>> type(make_quantizer(QuantSpec(4), "twin")).__name__
        'TwinUniformQuantizer'
        >>> make_quantizer(None, "log2") is None
        True
    """
    if kind not in _KINDS:
        raise EaqError(f"unknown quantizer kind {kind!r}; {choices_hint(QUANTIZER_KINDS)}")
    return None if spec is None else _KINDS[kind](spec)
