"""Clipping observers: entropy (KL) calibration and analytical clipping (ACIQ).

Both choose a clipping threshold below the observed maximum, trading clipping error on the rare
large values for a finer grid on the many small ones; both register into the observer registry
(``--observer kl`` / ``--observer aciq``).

* ``kl``: TensorRT's entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017).
  A histogram of ``|x|`` per block is accumulated over batches; the threshold minimises the KL
  divergence between the clipped reference distribution and its quantized version.
* ``aciq``: Banner, Nahshan and Soudry, "Post training 4-bit quantization of convolutional
  networks for rapid-deployment" (NeurIPS 2019). A Laplace (or Gaussian) is fitted per block and
  the clipping value is the one minimising the expected clipping plus rounding MSE; the
  published optimal ``alpha / b`` (Laplace) and ``alpha / sigma`` (Gaussian) are
  :data:`ACIQ_LAPLACE` and :data:`ACIQ_GAUSSIAN`; other widths are solved numerically from the
  same error model.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor

from eaq.errors import EaqError
from eaq.quant.granularity import Granularity, blocks_2d
from eaq.quant.observers import MinMaxObserver, register_observer

__all__ = ["ACIQ_GAUSSIAN", "ACIQ_LAPLACE", "ACIQObserver", "KLObserver", "aciq_alpha"]

# Optimal clipping alpha / b for a Laplace(0, b) at M bits (Banner et al. 2019, Sec. 3 / their
# reference code `int_quantizer.py`).
ACIQ_LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
# Optimal clipping alpha / sigma for a Gaussian(0, sigma) at M bits (same source).
ACIQ_GAUSSIAN = {2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}


def _aciq_mse(alpha: float, bits: int, dist: str) -> float:
    """ACIQ's expected MSE for unit scale: clipping error + rounding error ``alpha^2/(3*4^M)``."""
    rounding = alpha**2 / (3.0 * 4.0**bits)
    if dist == "laplace":
        return 2.0 * math.exp(-alpha) + rounding
    tail = 1.0 - math.erf(alpha / math.sqrt(2.0))
    clip = (alpha**2 + 1.0) * tail - math.sqrt(2.0 / math.pi) * alpha * math.exp(-(alpha**2) / 2)
    return clip + rounding


@cache
def aciq_alpha(bits: int, dist: str = "laplace") -> float:
    """Optimal clipping value in units of ``b`` (Laplace) or ``sigma`` (Gaussian) at ``bits``.

    The published constants for 2..8 bits; other widths solved by golden-section search on the
    same error model (:func:`_aciq_mse`).

    Examples:
        >>> aciq_alpha(4)
        5.03
        >>> aciq_alpha(4, "gaussian")
        2.55
    """
    if dist not in ("laplace", "gaussian"):
        raise EaqError(f"unknown ACIQ distribution {dist!r}; valid: laplace, gaussian")
    table = ACIQ_LAPLACE if dist == "laplace" else ACIQ_GAUSSIAN
    if bits in table:
        return table[bits]
    lo, hi = 0.1, 40.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _aciq_mse(a, bits, dist) < _aciq_mse(b, bits, dist):
            hi = b
        else:
            lo = a
    return round((lo + hi) / 2.0, 4)


class _RangeObserver(MinMaxObserver):
    """Shared part: exact running min/max per block (MinMaxObserver's); the clip is intersected
    with it. ``min_max()`` is the unclipped range."""

    def _observe_range(self, x: Tensor) -> None:
        MinMaxObserver._observe(self, x)

    def _clip(self, threshold: Tensor, center: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
        t = threshold.reshape(self.min_val.shape)
        lo = torch.maximum(self.min_val, center - t)
        hi = torch.minimum(self.max_val, center + t)
        return lo, hi


@register_observer("kl")
class KLObserver(_RangeObserver):
    """TensorRT-style entropy calibration on a histogram of ``|x|`` per block.

    Each block keeps ``bins`` equal bins over ``[0, max|x|]``. When a batch exceeds the current
    range, the range grows to the new maximum and the old counts are moved into the new bins
    (each old bin's count goes to the new bin holding its centre). At :meth:`compute_qparams`
    every candidate threshold ``i`` bins wide (``i`` from the number of quantization levels to
    ``bins``, every ``stride`` bins) is scored: the reference ``P`` is the first ``i`` bins with
    all larger values added to bin ``i - 1``; ``Q`` merges those ``i`` bins into ``levels``
    groups and spreads each group's mass evenly over its non-empty bins; the threshold with the
    smallest ``KL(P || Q)`` wins. Exact zeros are not counted. ``levels`` is ``2**(bits-1)``
    for signed data and ``2**bits`` for unsigned. The returned range is ``[-t, t]``
    intersected with the observed min/max.

    Args:
        granularity: Granularity (per tensor for activations; per channel works, one histogram
            per channel).
        bins: Histogram bins per block.
        stride: Step between candidate thresholds, in bins (1 = TensorRT's exhaustive search).
    """

    def __init__(self, granularity: Granularity, bins: int = 2048, stride: int = 8) -> None:
        super().__init__(granularity)
        if bins < 16:
            raise EaqError(f"bins must be >= 16, got {bins}")
        if stride < 1:
            raise EaqError(f"stride must be >= 1, got {stride}")
        self.bins = int(bins)
        self.stride = int(stride)
        self.hist: Tensor | None = None  # [n_blocks, bins] float64 counts
        self.hist_max: Tensor | None = None  # [n_blocks] upper edge of the last bin
        self.threshold: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        self._observe_range(x)
        a = blocks_2d(x, self.granularity).abs()
        n_blocks = a.shape[0]
        batch_max = a.amax(dim=1).clamp(min=1e-12)
        if self.hist is None:
            self.hist = torch.zeros(n_blocks, self.bins, dtype=torch.float64, device=x.device)
            self.hist_max = batch_max
        elif bool((batch_max > self.hist_max).any()):
            new_max = torch.maximum(self.hist_max, batch_max)
            centres = (torch.arange(self.bins, device=x.device, dtype=torch.float64) + 0.5)[None]
            centres = centres * (self.hist_max.double() / self.bins)[:, None]
            idx = (centres / (new_max.double() / self.bins)[:, None]).long()
            idx = idx.clamp_(max=self.bins - 1)
            moved = torch.zeros_like(self.hist).scatter_add_(1, idx, self.hist)
            self.hist, self.hist_max = moved, new_max
        width = (self.hist_max / self.bins)[:, None]
        idx = (a / width).long().clamp_(max=self.bins - 1)
        # Exact zeros (half of a ReLU output) lie on every grid: leaving them out keeps the spike
        # at 0 from dragging the threshold down.
        self.hist.scatter_add_(1, idx, (a > 0).double())

    def _kl_threshold(self, levels: int) -> Tensor:
        hist = self.hist
        n_blocks, bins = hist.shape
        device = hist.device
        start = min(levels, bins)
        candidates = list(range(start, bins + 1, self.stride))
        if candidates[-1] != bins:
            candidates.append(bins)
        best_kl = torch.full((n_blocks,), float("inf"), dtype=torch.float64, device=device)
        best_i = torch.full((n_blocks,), bins, dtype=torch.float64, device=device)
        cum_tail = hist.flip(1).cumsum(1).flip(1)  # cum_tail[:, j] = sum(hist[:, j:])
        for i in candidates:
            p = hist[:, :i].clone()
            if i < bins:
                p[:, -1] += cum_tail[:, i]
            nonzero = (hist[:, :i] > 0).double()
            group = (torch.arange(i, device=device) * levels // i).clamp_(max=levels - 1)
            group = group.expand(n_blocks, i)
            mass = torch.zeros(n_blocks, levels, dtype=torch.float64, device=device)
            mass.scatter_add_(1, group, hist[:, :i])
            count = torch.zeros_like(mass).scatter_add_(1, group, nonzero)
            q = (mass / count.clamp(min=1)).gather(1, group) * nonzero
            p = p / p.sum(1, keepdim=True).clamp(min=1e-300)
            q = q / q.sum(1, keepdim=True).clamp(min=1e-300)
            # Bins where P > 0 but Q == 0 (only the folded-in last bin) get a tiny Q, as TensorRT's
            # smoothing does.
            q = torch.where((p > 0) & (q == 0), torch.full_like(q, 1e-10), q)
            ratio = torch.where(p > 0, p / q, torch.ones_like(p))
            kl = (p * ratio.log()).sum(1)
            better = kl < best_kl
            best_kl = torch.where(better, kl, best_kl)
            best_i = torch.where(better, torch.full_like(best_i, float(i)), best_i)
        return (best_i * self.hist_max.double() / bins).float()

    def _range(self, bits: int, *, symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
        levels = 2 ** (bits - 1) if signed else 2**bits
        self.threshold = self._kl_threshold(levels).reshape(self.min_val.shape)
        return self._clip(self.threshold)


@register_observer("aciq")
class ACIQObserver(_RangeObserver):
    """Analytical clipping (ACIQ): fit a Laplace or Gaussian per block, clip at ``alpha*``.

    Per block it accumulates the mean, the mean absolute deviation from each batch's mean (the
    Laplace scale ``b``, MLE up to using the mean for the median) and the variance. For signed
    data the range is ``mean +- alpha``, ``alpha = aciq_alpha(bits) * b`` (or ``* sigma``); for
    non-negative data (after ReLU, unsigned codes) the one-sided Laplace (exponential, scale =
    mean of the positive values) is clipped at ``aciq_alpha(bits + 1) * scale``: ``2**bits``
    levels on one side match a signed ``bits + 1``-bit grid. Either way the range is
    intersected with the observed min/max.

    Args:
        granularity: Granularity.
        distribution: ``"laplace"`` (the paper's choice for activations) or ``"gaussian"``.
    """

    def __init__(self, granularity: Granularity, distribution: str = "laplace") -> None:
        super().__init__(granularity)
        aciq_alpha(4, distribution)  # validates the name
        self.distribution = distribution
        self._n = 0.0
        self._sum: Tensor | None = None
        self._sumsq: Tensor | None = None
        self._absdev: Tensor | None = None  # sum over batches of n_batch * mean|x - mean_batch|
        self._npos: Tensor | None = None  # count of positive values (one-sided fit)
        self.alpha: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        self._observe_range(x)
        blocks = blocks_2d(x, self.granularity).double()
        n = blocks.shape[1]
        s = blocks.sum(1)
        sq = blocks.square().sum(1)
        dev = (blocks - (s / n)[:, None]).abs().sum(1)
        pos = (blocks > 0).sum(1).double()
        if self._sum is None:
            self._sum, self._sumsq, self._absdev, self._npos = s, sq, dev, pos
        else:
            self._sum, self._sumsq = self._sum + s, self._sumsq + sq
            self._absdev, self._npos = self._absdev + dev, self._npos + pos
        self._n += n

    def _range(self, bits: int, *, symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
        mean = self._sum / self._n
        shape = self.min_val.shape
        if not signed:
            scale = self._sum.clamp(min=0) / self._npos.clamp(min=1)  # mean of the positive part
            alpha = aciq_alpha(bits + 1, "laplace") * scale
            self.alpha = alpha.float().reshape(shape)
            return self._clip(self.alpha)
        if self.distribution == "laplace":
            spread = self._absdev / self._n
        else:
            spread = (self._sumsq / self._n - mean.square()).clamp(min=0).sqrt()
        self.alpha = (aciq_alpha(bits, self.distribution) * spread).float().reshape(shape)
        center = mean.float().reshape(shape)
        if symmetric:
            center = torch.zeros_like(center)
        return self._clip(self.alpha, center)
