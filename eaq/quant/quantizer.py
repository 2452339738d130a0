"""The fake quantizer module and the explicit calibration context.

A :class:`Quantizer` keeps its parameters in persistent buffers, so they survive ``state_dict``.
It is calibrated only inside :func:`calibration` (or by :meth:`Quantizer.calibrate_` for weights),
never silently on a first forward pass::

    with calibration(model):
        for x, _ in loader:
            model(x)
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from eaq.errors import EaqError, choices_hint
from eaq.quant.granularity import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    expand_params,
    format_granularity,
    parse_granularity,
)
from eaq.quant.observers import Observer, create_observer, observer_names
from eaq.quant.primitives import fake_quantize, quant_range

__all__ = ["ObserverCache", "QuantSpec", "Quantizer", "calibration"]


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: Bit width (2..16).
        symmetric: Zero point 0 if True, else affine.
        signed: Integer range; None decides at calibration (unsigned when the calibrated min >= 0).
        granularity: One scale per tensor, channel or group.
        observer: Registered observer name (see :func:`eaq.quant.observers.observer_names`).
    """

    bits: int
    symmetric: bool = True
    signed: bool | None = None
    granularity: Granularity = PerTensor()
    observer: str = "minmax"

    def __post_init__(self) -> None:
        quant_range(self.bits, True)  # EaqError for bad bits
        if not isinstance(self.symmetric, bool):
            raise EaqError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.signed is not None and not isinstance(self.signed, bool):
            raise EaqError(f"signed must be true, false or null (automatic), got {self.signed!r}")
        if not isinstance(self.granularity, PerTensor | PerChannel | PerGroup):
            raise EaqError(
                f"bad granularity {self.granularity!r}; valid: PerTensor, PerChannel, PerGroup"
            )
        if self.observer not in observer_names():
            raise EaqError(f"unknown observer {self.observer!r}; {choices_hint(observer_names())}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the granularity is written as :func:`format_granularity` text."""
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "signed": self.signed,
            "granularity": format_granularity(self.granularity),
            "observer": self.observer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Inverse of :meth:`to_dict` (EaqError for unknown or missing keys)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise EaqError(f"unknown QuantSpec key(s) {', '.join(unknown)}; {choices_hint(names)}")
        if "bits" not in data:
            raise EaqError("QuantSpec needs 'bits'")
        kwargs = dict(data)
        if isinstance(kwargs.get("granularity"), str):
            kwargs["granularity"] = parse_granularity(kwargs["granularity"])
        return cls(**kwargs)


def _empty_buffers() -> tuple[Tensor, Tensor]:
    return torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.int32)


class Quantizer(nn.Module):
    """Fake-quantizes a tensor with parameters held in buffers.

    Buffers (all persistent): ``scale`` (float32, shape ``scale_shape``; empty until calibrated),
    ``zero_point`` (int32, same shape), ``quant_min`` and ``quant_max`` (0-d int64).

    Attributes:
        spec: The :class:`QuantSpec`.
        enabled: If False, :meth:`forward` is the identity.
        calibrating: If True, :meth:`forward` feeds the observer and returns its input unchanged.

    Args:
        spec: How to quantize.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"Quantizer needs a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.enabled = True
        self.calibrating = False
        self.observer: Observer | None = None
        scale, zero_point = _empty_buffers()
        qmin, qmax = quant_range(spec.bits, True if spec.signed is None else spec.signed)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.register_buffer("quant_min", torch.tensor(qmin, dtype=torch.int64))
        self.register_buffer("quant_max", torch.tensor(qmax, dtype=torch.int64))
        self._qrange = (qmin, qmax)  # python copy of the range buffers: no device sync per call

    @property
    def is_calibrated(self) -> bool:
        """True once ``scale``/``zero_point`` hold parameters."""
        return self.scale.numel() > 0

    @property
    def signed(self) -> bool | None:
        """The integer range in use (None while automatic and uncalibrated)."""
        if not self.is_calibrated:
            return self.spec.signed
        return self._qrange[0] < 0

    def start_calibration(self) -> None:
        """Enter calibrating mode with a fresh observer."""
        self.observer = create_observer(self.spec.observer, self.spec.granularity)
        self.calibrating = True

    def finish_calibration(self) -> None:
        """Compute parameters from the observer into the buffers and drop the observer.

        Raises:
            EaqError: If the observer saw no data.
            RuntimeError: If calibration was never started.
        """
        if self.observer is None:
            raise RuntimeError("finish_calibration() without start_calibration()")
        spec = self.spec
        scale, zero_point, signed = self.observer.compute_qparams(
            spec.bits, symmetric=spec.symmetric, signed=spec.signed
        )
        qmin, qmax = quant_range(spec.bits, signed)
        device = self.quant_min.device
        self.scale = scale.to(device=device, dtype=torch.float32)
        self.zero_point = zero_point.to(device=device, dtype=torch.int32)
        self.quant_min.fill_(qmin)
        self.quant_max.fill_(qmax)
        self._qrange = (qmin, qmax)
        self.observer = None
        self.calibrating = False

    @torch.no_grad()
    def calibrate_(self, x: Tensor) -> Quantizer:
        """Observe ``x`` once and finish calibration (for weights); returns ``self``."""
        self.start_calibration()
        self.observer.update(x.detach())
        self.finish_calibration()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x``; identity when disabled, observe and pass through if calibrating."""
        if not self.enabled:
            return x
        if self.calibrating:
            self.observer.update(x.detach())
            return x
        if not self.is_calibrated:
            raise RuntimeError(
                "Quantizer used before calibration: run the model inside eaq.quant.calibration(), "
                "call calibrate_(), or load a calibrated state_dict"
            )
        scale, zero_point = self.scale, self.zero_point
        if isinstance(self.spec.granularity, PerGroup):
            scale, zero_point = expand_params(scale, x.shape), expand_params(zero_point, x.shape)
        return fake_quantize(x, scale, zero_point, *self._qrange)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                buf = getattr(self, name)
                setattr(
                    self,
                    name,
                    torch.empty_like(state_dict[key], dtype=buf.dtype, device=buf.device),
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._qrange = (int(self.quant_min), int(self.quant_max))

    def extra_repr(self) -> str:
        spec = self.spec
        signed = self.signed
        sign = "signed=auto" if signed is None else ("signed" if signed else "unsigned")
        g = spec.granularity
        if isinstance(g, PerTensor):
            gran = "per-tensor"
        elif isinstance(g, PerChannel):
            gran = f"per-channel(axis={g.axis})"
        else:
            gran = f"per-group(size={g.size}, axis={g.axis})"
        parts = [
            f"bits={spec.bits}",
            "symmetric" if spec.symmetric else "affine",
            sign,
            gran,
            f"observer={spec.observer}",
        ]
        if not self.enabled:
            parts.append("disabled")
        if not self.is_calibrated:
            parts.append("uncalibrated")
        return ", ".join(parts)


class ObserverCache:
    """The observers of calibration passes over one float model and one calibration set.

    Plain PTQ calibrates every quantizer on the float activations (each quantizer passes its
    input through), and an observer records values, not a bit width: the width is applied when
    the quantizer finishes calibrating. So two plans for the same float model, calibrated on the
    same batches, observe the same values wherever both place a quantizer of the same class,
    observer and granularity at the same module path (a W8A8 and a W4A4 plan, say), and one
    pass serves both. :func:`calibration` with ``cache=`` stores its observers here;
    :meth:`restore_` finishes a model's quantizers from them when every one is found, with no
    pass (:func:`eaq.nn.calibrate_` does both). The result is the same as a pass of its own,
    bit for bit.

    Valid only for one root model (paths are relative to it), the float weights and the batches
    of the passes that filled it: a method that changes weights before calibrating (cle,
    smoothquant, repq) must not use it.

    Attributes:
        passes_saved: calibrations finished from the cache.
        restored_seconds: the wall time of the pass whose observers the last :meth:`restore_`
            used (the longest, if several passes filled them): what that calibration costs
            on its own.
    """

    def __init__(self) -> None:
        self._observers: dict[tuple, tuple[Observer, float]] = {}
        self.passes_saved = 0
        self.restored_seconds = 0.0

    @staticmethod
    def _key(name: str, q: Quantizer) -> tuple:
        spec = q.spec
        return (name, type(q), spec.observer, format_granularity(spec.granularity))

    def add(self, name: str, q: Quantizer, seconds: float) -> None:
        """Keep a copy of ``q``'s observer (calibrating, after its pass of ``seconds``) under
        path ``name``."""
        self._observers[self._key(name, q)] = (copy.deepcopy(q.observer), seconds)

    def restore_(self, model: nn.Module) -> bool:
        """Finish every enabled quantizer of ``model`` from the cache; False (nothing changed)
        unless every one is found."""
        quantizers = _enabled_quantizers(model)
        found = [self._observers.get(self._key(name, q)) for name, q in quantizers]
        if not quantizers or any(o is None for o in found):
            return False
        with torch.no_grad():
            for (_, q), (observer, _) in zip(quantizers, found, strict=True):
                q.observer, q.calibrating = copy.deepcopy(observer), True
                q.finish_calibration()
        self.passes_saved += 1
        self.restored_seconds = max(seconds for _, seconds in found)
        return True


def _enabled_quantizers(model: nn.Module) -> list[tuple[str, Quantizer]]:
    return [
        (name or type(model).__name__, m)
        for name, m in model.named_modules()
        if isinstance(m, Quantizer) and m.enabled
    ]


@contextlib.contextmanager
def calibration(model: nn.Module, *, cache: ObserverCache | None = None) -> Iterator[None]:
    """Calibrate every enabled :class:`Quantizer` in ``model`` on the forward passes in the body.

    On entry each enabled quantizer gets a fresh observer and passes its input through unchanged;
    on normal exit each computes its parameters (first leaving a copy of its observer in
    ``cache``, when given). If the body raises, the quantizers return to their previous state
    (previous parameters kept) and the exception propagates.

    Raises:
        EaqError: If a quantizer saw no batch (names the module paths; the calibration set is
            empty or the model never reached them). No quantizer is changed in that case.
    """
    start = time.perf_counter()
    quantizers = _enabled_quantizers(model)
    previous = [(m.calibrating, m.observer) for _, m in quantizers]

    def restore() -> None:
        for (_, m), (calibrating, observer) in zip(quantizers, previous, strict=True):
            m.calibrating, m.observer = calibrating, observer

    for _, m in quantizers:
        m.start_calibration()
    try:
        yield
    except BaseException:
        restore()
        raise
    empty = [name for name, m in quantizers if m.observer is None or m.observer.n_updates == 0]
    if empty:
        restore()
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise EaqError(
            f"calibration saw no data for {len(empty)} quantizer(s): {shown}; the calibration set "
            "is empty or the forward pass never reached them"
        )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for name, m in quantizers:
            if cache is not None:
                cache.add(name, m, seconds)
            m.finish_calibration()
