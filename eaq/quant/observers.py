"""Observers: collect statistics over calibration batches and return quantization parameters.

An observer never quantizes anything and holds no ``nn.Module`` state; a
:class:`~eaq.quant.quantizer.Quantizer` owns one only while it calibrates. Observers are chosen by
name from a registry (like timm's ``register_model``)::

    @register_observer("mine")
    class MyObserver(Observer): ...

    obs = create_observer("mine", PerChannel(0))

Subclasses implement :meth:`Observer._observe` (one batch, float32, already checked) and
:meth:`Observer.min_max`; those whose range depends on the bit width (MSE search) override
:meth:`Observer._range`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from eaq.errors import EaqError, choices_hint
from eaq.quant.granularity import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    blocks_2d,
    format_granularity,
    reduce_blocks,
    scale_shape,
)
from eaq.quant.primitives import _fake_quantize_impl, choose_qparams, quant_range
from eaq.registry import Registry

__all__ = [
    "EMAObserver",
    "MinMaxObserver",
    "MSEObserver",
    "Observer",
    "PercentileObserver",
    "create_observer",
    "observer_names",
    "register_observer",
]

OBSERVERS: Registry[type[Observer]] = Registry("observer")


def register_observer(name: str) -> Callable[[type[Observer]], type[Observer]]:
    """Class decorator that makes an :class:`Observer` subclass available by ``name``."""

    def decorator(cls: type[Observer]) -> type[Observer]:
        OBSERVERS.add(name, cls)
        cls.name = name
        return cls

    return decorator


def observer_names() -> list[str]:
    """Names of all registered observers, sorted."""
    return OBSERVERS.names(sort=True)


def create_observer(name: str, granularity: Granularity, **kwargs) -> Observer:
    """Create the observer registered as ``name``.

    Raises:
        EaqError: For an unknown name (listing the valid ones) or an unknown keyword argument.
    """
    cls = OBSERVERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "granularity")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise EaqError(
            f"unknown option(s) {', '.join(unknown)} for observer {name!r}; {choices_hint(valid)}"
        )
    return cls(granularity, **kwargs)


def _subsample_columns(n_cols: int, k: int, generator: torch.Generator, device) -> Tensor:
    """``k`` distinct random column indices out of ``n_cols`` (seeded, on ``device``)."""
    return torch.randperm(n_cols, generator=generator)[:k].to(device)


class Observer(ABC):
    """Base class: validates batches, counts them and turns a range into parameters.

    Args:
        granularity: One scale per tensor, channel or group (see :mod:`eaq.quant.granularity`).
    """

    name: str = "observer"

    def __init__(self, granularity: Granularity, **kwargs) -> None:
        if kwargs:
            raise EaqError(f"unknown option(s) {', '.join(sorted(kwargs))} for {self.name!r}")
        if not isinstance(granularity, PerTensor | PerChannel | PerGroup):
            raise EaqError(
                f"bad granularity {granularity!r}; valid: PerTensor, PerChannel, PerGroup"
            )
        self.granularity = granularity
        self._n_updates = 0
        self._tensor_min: Tensor | None = None
        self._scale_shape: tuple[int, ...] | None = None

    @property
    def n_updates(self) -> int:
        """Number of batches seen so far."""
        return self._n_updates

    def update(self, x: Tensor) -> None:
        """Record the statistics of one batch (a detached tensor; empty batches are ignored)."""
        x = x.detach()
        if x.numel() == 0:
            return
        shape = scale_shape(x.shape, self.granularity)
        if self._scale_shape is not None and shape != self._scale_shape:
            raise EaqError(
                f"granularity {format_granularity(self.granularity)} gives scale shape "
                f"{list(shape)} for a batch of shape {list(x.shape)}, but "
                f"{list(self._scale_shape)} for earlier batches; use a granularity that does not "
                "depend on the batch size (tensor, or channel:1 for activations)"
            )
        self._scale_shape = shape
        x = x.float()
        tmin = x.amin()
        self._tensor_min = (
            tmin if self._tensor_min is None else torch.minimum(self._tensor_min, tmin)
        )
        self._observe(x)
        self._n_updates += 1

    @abstractmethod
    def _observe(self, x: Tensor) -> None:
        """Record one float32 batch."""

    @abstractmethod
    def min_max(self) -> tuple[Tensor, Tensor]:
        """The per-block range this observer settles on, each of shape ``scale_shape``."""

    def _range(self, bits: int, *, symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
        """The range to quantize for these settings; by default :meth:`min_max`."""
        return self.min_max()

    def _check_data(self) -> None:
        if self._n_updates == 0:
            raise EaqError(
                f"{self.name} observer saw no data: the calibration set is empty "
                "(no batch reached this quantizer)"
            )

    def compute_qparams(
        self, bits: int, *, symmetric: bool, signed: bool | None
    ) -> tuple[Tensor, Tensor, bool]:
        """Return ``(scale, zero_point, signed_used)`` for the data seen so far.

        Args:
            bits: Bit width (2..16).
            symmetric: Zero point 0 if True, else affine.
            signed: Integer range; None picks unsigned when the whole tensor's observed minimum is
                >= 0 (e.g. after ReLU), else signed.

        Raises:
            EaqError: If no batch was observed.
        """
        quant_range(bits, True)  # validates bits
        self._check_data()
        if signed is None:
            signed = bool(self._tensor_min < 0)
        lo, hi = self._range(bits, symmetric=symmetric, signed=signed)
        scale, zero_point = choose_qparams(lo, hi, bits, symmetric=symmetric, signed=signed)
        return scale, zero_point, signed

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({format_granularity(self.granularity)}, "
            f"n_updates={self._n_updates})"
        )


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum per block."""

    def __init__(self, granularity: Granularity) -> None:
        super().__init__(granularity)
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        lo = reduce_blocks(x, self.granularity, "amin")
        hi = reduce_blocks(x, self.granularity, "amax")
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def min_max(self) -> tuple[Tensor, Tensor]:
        self._check_data()
        return self.min_val, self.max_val


@register_observer("ema")
class EMAObserver(Observer):
    """Moving-average min/max, as torch.ao's ``MovingAverageMinMaxObserver``.

    The first batch initialises the range; later ones update
    ``min += averaging_constant * (batch_min - min)`` (same for max).

    Args:
        granularity: Granularity.
        averaging_constant: Weight of the newest batch.
    """

    def __init__(self, granularity: Granularity, averaging_constant: float = 0.01) -> None:
        super().__init__(granularity)
        if not 0.0 < averaging_constant <= 1.0:
            raise EaqError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = float(averaging_constant)
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        lo = reduce_blocks(x, self.granularity, "amin")
        hi = reduce_blocks(x, self.granularity, "amax")
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)

    def min_max(self) -> tuple[Tensor, Tensor]:
        self._check_data()
        return self.min_val, self.max_val


@register_observer("percentile")
class PercentileObserver(Observer):
    """Per-block percentiles averaged over batches.

    Per batch it takes the ``100 - percentile`` and ``percentile`` percentiles of the values (the
    affine range) and the ``percentile`` percentile of ``|x|`` (the symmetric range) per block, on
    a seeded subsample of at most ``max(max_samples, min_per_block * n_blocks)`` elements, and
    averages them over batches.

    Args:
        granularity: Granularity.
        percentile: Upper percentile in (50, 100].
        max_samples: Cap on the elements per batch used for the percentiles (all blocks together).
        min_per_block: Elements per block used regardless of ``max_samples``.
        seed: Seed of the subsampling generator.
    """

    def __init__(
        self,
        granularity: Granularity,
        percentile: float = 99.99,
        max_samples: int = 2**20,
        min_per_block: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(granularity)
        if not 50.0 < percentile <= 100.0:
            raise EaqError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)
        self.max_samples = int(max_samples)
        self.min_per_block = int(min_per_block)
        self._gen = torch.Generator().manual_seed(seed)
        self._lo: Tensor | None = None
        self._hi: Tensor | None = None
        self._abs: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        blocks = blocks_2d(x, self.granularity)
        n_blocks, n_cols = blocks.shape
        cap = max(1, self.min_per_block, self.max_samples // n_blocks)
        if n_cols > cap:
            blocks = blocks[:, _subsample_columns(n_cols, cap, self._gen, x.device)]
        p = self.percentile / 100.0
        q = torch.tensor([1.0 - p, p], device=x.device)
        lo, hi = torch.quantile(blocks, q, dim=1)
        ab = torch.quantile(blocks.abs(), p, dim=1)
        shape = self._scale_shape
        lo, hi, ab = lo.reshape(shape), hi.reshape(shape), ab.reshape(shape)
        if self._lo is None:
            self._lo, self._hi, self._abs = lo, hi, ab
        else:
            n = self._n_updates + 1
            self._lo = self._lo + (lo - self._lo) / n
            self._hi = self._hi + (hi - self._hi) / n
            self._abs = self._abs + (ab - self._abs) / n

    def min_max(self) -> tuple[Tensor, Tensor]:
        """The averaged lower and upper percentiles (the affine range)."""
        self._check_data()
        return self._lo, self._hi

    def _range(self, bits: int, *, symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
        if symmetric:
            return -self._abs, self._abs
        return self.min_max()


@register_observer("mse")
class MSEObserver(Observer):
    """MSE-optimal clipping of the min/max range, searched per block.

    Keeps the exact running min/max and a bounded uniform sample of the values of each block
    (at most ``max(max_samples, min_per_block * n_blocks)`` elements, seeded reservoir-style
    subsampling; the floor keeps small groups of big weights whole). At
    :meth:`compute_qparams` it grid-searches a clipping ratio ``alpha`` from 1.0 down to
    ``alpha_min`` (``n_alphas`` steps) per block, vectorised over blocks, minimising the squared
    error of fake quantization over the sample. Ties keep the larger ``alpha``.

    :meth:`min_max` returns the unclipped range; the chosen ratios are in ``alpha`` after
    :meth:`compute_qparams`.

    Args:
        granularity: Granularity.
        max_samples: Cap on the stored elements (all blocks together).
        min_per_block: Elements per block kept regardless of ``max_samples``.
        n_alphas: Number of grid points.
        alpha_min: Smallest clipping ratio tried.
        seed: Seed of the subsampling generator.
    """

    def __init__(
        self,
        granularity: Granularity,
        max_samples: int = 2**20,
        min_per_block: int = 256,
        n_alphas: int = 50,
        alpha_min: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(granularity)
        if not 0.0 < alpha_min <= 1.0:
            raise EaqError(f"alpha_min must be in (0, 1], got {alpha_min}")
        if n_alphas < 1:
            raise EaqError(f"n_alphas must be >= 1, got {n_alphas}")
        self.max_samples = int(max_samples)
        self.min_per_block = int(min_per_block)
        self.n_alphas = int(n_alphas)
        self.alpha_min = float(alpha_min)
        self._gen = torch.Generator().manual_seed(seed)
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None
        self.sample: Tensor | None = None  # [n_blocks, k]
        self._seen = 0  # columns seen so far
        self.alpha: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        lo = reduce_blocks(x, self.granularity, "amin")
        hi = reduce_blocks(x, self.granularity, "amax")
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

        blocks = blocks_2d(x, self.granularity)
        n_blocks, n_cols = blocks.shape
        cap = max(1, self.min_per_block, self.max_samples // n_blocks)
        kept = 0 if self.sample is None else self.sample.shape[1]
        total = self._seen + n_cols
        if kept + n_cols <= cap:  # everything fits: keep all of it
            new = blocks.clone()
            self.sample = new if self.sample is None else torch.cat([self.sample, new], dim=1)
        else:  # a uniform sample of `cap` columns out of all `total` seen so far
            n_new = min(n_cols, round(cap * n_cols / total))
            n_old = min(kept, cap - n_new)
            n_new = min(n_cols, cap - n_old)
            new = blocks[:, _subsample_columns(n_cols, n_new, self._gen, x.device)]
            if n_old:
                old = self.sample[:, _subsample_columns(kept, n_old, self._gen, x.device)]
                new = torch.cat([old, new], dim=1)
            self.sample = new.contiguous()
        self._seen = total

    def min_max(self) -> tuple[Tensor, Tensor]:
        """The unclipped running min/max."""
        self._check_data()
        return self.min_val, self.max_val

    def _range(self, bits: int, *, symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
        qmin, qmax = quant_range(bits, signed)
        shape = self.min_val.shape
        lo, hi = self.min_val.reshape(-1), self.max_val.reshape(-1)
        sample = self.sample
        best_err = torch.full_like(lo, float("inf"))
        best_alpha = torch.ones_like(lo)
        for alpha in torch.linspace(1.0, self.alpha_min, self.n_alphas).tolist():
            scale, zp = choose_qparams(
                lo * alpha, hi * alpha, bits, symmetric=symmetric, signed=signed
            )
            fq, _ = _fake_quantize_impl(sample, scale[:, None], zp[:, None], qmin, qmax, False)
            err = (fq - sample).square_().sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_alpha = torch.where(better, torch.full_like(best_alpha, alpha), best_alpha)
        self.alpha = best_alpha.reshape(shape)
        return self.min_val * self.alpha, self.max_val * self.alpha
