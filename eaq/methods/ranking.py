"""Ranking-aware PTQ: a per-layer search of the quantization scales (Liu et al., NeurIPS 2021).

"Post-Training Quantization for Vision Transformer" (Liu, Wang, Han, Zhang, Ma, Gao;
arXiv:2106.14156), Sec. 3.2-3.3. The model is first quantized with the plan and calibrated as in
``ptq``; those scales are the starting point. Then, for every quantized layer in module order
(each transformer block's ``qkv``, ``qk_matmul``, ``av_matmul``, ``proj``, ``fc1``, ``fc2``, and
any other conv/linear, so CNNs work too), on the layer's float inputs ``X`` and float output
``O`` (captured from a float copy of the model, on the first ``search_images`` calibration
images), the scales of its two quantized operands are searched on the grid
``alpha * initial_scale``, ``alpha`` in ``linspace(low, high, search_steps)`` plus 1.0:

- a conv/linear: the weight scale (all channels by the same ``alpha``) with the input scale
  fixed, then the input scale with the weight scale fixed; ``rounds`` times;
- a matmul: its first input's scale, then its second's; ``rounds`` times.

Objective, maximised (``O_hat`` is the quantized layer's output on the same float inputs)::

    pearson(O, O_hat)                                    conv, linear, av_matmul
    pearson(O, O_hat) - ranking_weight * L_rank(O, O_hat)    qk_matmul (attention scores)

``L_rank`` is the paper's ranking loss (its eq. 9) on the attention scores, a hinge on the
order of every pair of keys of every query row, averaged here over rows and pairs (the paper
sums; the mean keeps ``ranking_weight`` independent of the token count)::

    L_rank = mean_{k, i<j} max(0, theta - (A_hat[k,i] - A_hat[k,j]) * sign(A[k,i] - A[k,j]))

With too many pairs the rows are subsampled (seeded; the same rows for every candidate). The
current scale is always a candidate and ties keep it, so the objective never decreases.
Non-uniform input quantizers (log2, twin) are searched the same way (their ``scale`` is the
base step). Optionally the empirical bias correction (:mod:`eaq.methods.bias_correction`) runs
at the end.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.bias_correction import bias_correct_
from eaq.methods.registry import Batches, register_method
from eaq.nn import (
    QuantAttention,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    QuantSummary,
    calibrate_,
    quantizable_layers,
    quantize_,
)
from eaq.nn.hooks import StopForward, forward_until_stopped, hooks_on
from eaq.plan import Plan
from eaq.quant import Quantizer

log = logging.getLogger(__name__)

__all__ = [
    "RANK_MAX_PAIRS",
    "RANK_THETA",
    "LayerSearch",
    "RankingConfig",
    "float_reference",
    "pearson",
    "rank_search_",
    "ranking",
    "ranking_loss",
    "search_layer_",
]

RANK_THETA = 0.01
"""The hinge margin ``theta`` of the ranking loss, in units of the attention scores."""
RANK_MAX_PAIRS = 2**19
"""Key pairs (rows x pairs per row) the ranking loss looks at per evaluation."""


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of the flattened ``a`` and ``b`` (0 if either is constant).

    Examples:
        >>> round(pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])), 6)
        0.993399
    """
    x = a.detach().double().flatten()
    y = b.detach().double().flatten()
    x = x - x.mean()
    y = y - y.mean()
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else 0.0


def ranking_loss(scores_float: Tensor, scores_quant: Tensor, theta: float = RANK_THETA) -> Tensor:
    """The ranking loss of Liu et al. (2021, eq. 9), averaged over rows and key pairs.

    For every row ``k`` (one query's scores over the keys, the last dim) and every pair of keys
    ``i < j``: ``max(0, theta - (Q[k,i] - Q[k,j]) * sign(F[k,i] - F[k,j]))`` with ``F`` the
    float and ``Q`` the quantized scores. A pair whose order quantization keeps with a margin of
    at least ``theta`` costs 0; a flipped pair costs ``theta`` plus the size of the flip.

    Args:
        scores_float: Float scores ``[..., N]``.
        scores_quant: Quantized scores, same shape.
        theta: The margin.

    Returns:
        A 0-d float64 tensor.

    Examples:
        >>> ranking_loss(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[3.0, 1.0, 2.0]]), 0.5)
        tensor(0.5000, dtype=torch.float64)
    """
    if scores_float.shape != scores_quant.shape:
        raise ValueError(f"shapes differ: {scores_float.shape} vs {scores_quant.shape}")
    n = scores_float.shape[-1]
    if n < 2:
        return torch.zeros((), dtype=torch.float64)
    i, j = torch.triu_indices(n, n, 1, device=scores_float.device)
    f = scores_float.reshape(-1, n).double()
    q = scores_quant.reshape(-1, n).double()
    p = (q[:, i] - q[:, j]) * torch.sign(f[:, i] - f[:, j])
    return (theta - p).clamp(min=0).mean()


@dataclass(frozen=True)
class RankingConfig:
    """Settings of the scale search (see the module docstring).

    Attributes:
        search_steps: Grid points of ``alpha`` in ``[low, high]`` (1.0 is always added).
        rounds: Alternations between the two operands of each layer.
        ranking_weight: Weight of the ranking loss on the attention scores.
        low: Smallest ``alpha``.
        high: Largest ``alpha``.
        search_images: Calibration images the layers' inputs and outputs are captured on.
        theta: Margin of the ranking loss.
        seed: Seed of the ranking loss's row subsampling.
    """

    search_steps: int = 100
    rounds: int = 3
    ranking_weight: float = 0.1
    low: float = 0.5
    high: float = 1.2
    search_images: int = 64
    theta: float = RANK_THETA
    seed: int = 0

    def __post_init__(self) -> None:
        if self.search_steps < 1 or self.rounds < 1 or self.search_images < 1:
            raise EaqError(
                "search_steps, rounds and search_images must be >= 1, got "
                f"{self.search_steps}, {self.rounds}, {self.search_images}"
            )
        if not 0.0 < self.low <= self.high:
            raise EaqError(f"need 0 < low <= high, got low={self.low}, high={self.high}")
        if self.ranking_weight < 0 or self.theta < 0:
            raise EaqError(
                f"ranking_weight and theta must be >= 0, got {self.ranking_weight}, {self.theta}"
            )

    def alphas(self) -> list[float]:
        """The grid of ``alpha``: ``linspace(low, high, search_steps)`` and 1.0, sorted."""
        grid = torch.linspace(self.low, self.high, self.search_steps, dtype=torch.float64)
        return sorted({*(float(a) for a in grid), 1.0})


@dataclass(frozen=True)
class LayerSearch:
    """Outcome of one layer's search: objective before (PTQ scales) and after, and the chosen
    ``alpha`` of each searched quantizer (weight then input, or first then second input)."""

    name: str
    kind: str
    before: float
    after: float
    alphas: tuple[float, ...]


def _knobs(layer: nn.Module) -> list[Quantizer]:
    """The searched quantizers of a layer: weight then input, or a matmul's two inputs."""
    if isinstance(layer, QuantMatMul):
        qs = [layer.a_quantizer, layer.b_quantizer]
    else:
        qs = [layer.weight_quantizer, layer.input_quantizer]
    return [q for q in qs if isinstance(q, Quantizer) and q.enabled and q.is_calibrated]


@torch.no_grad()
def search_layer_(
    layer: nn.Module,
    inputs: Sequence[Tensor],
    objective: Callable[[Tensor], float],
    alphas: Sequence[float],
    rounds: int,
) -> tuple[float, float, tuple[float, ...]]:
    """Search the scales of ``layer``'s quantizers in place, alternating between them.

    Each quantizer's ``scale`` becomes ``alpha * (its scale on entry)`` for the ``alpha`` in
    ``alphas`` that maximises ``objective(layer(*inputs))`` with the others fixed; ``rounds``
    passes over the quantizers. The scale on entry (``alpha = 1``) is always tried and kept on
    ties, so the objective never decreases.

    Returns:
        ``(objective before, objective after, chosen alpha per quantizer)``.
    """
    knobs = _knobs(layer)
    initial = [q.scale.detach().clone() for q in knobs]
    chosen = [1.0] * len(knobs)
    best = before = objective(layer(*inputs))
    for _ in range(rounds if knobs else 0):
        for k, q in enumerate(knobs):
            for alpha in alphas:
                if alpha == chosen[k]:
                    continue
                q.scale.copy_(initial[k] * alpha)
                value = objective(layer(*inputs))
                if value > best:
                    best, chosen[k] = value, alpha
            q.scale.copy_(initial[k] * chosen[k])
    return before, best, tuple(chosen)


def float_reference(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose attention matmuls are modules (no quantizer anywhere)."""
    reference = copy.deepcopy(model).eval()
    quantize_(reference, Plan(default=None, first_last_8bit=False))
    return reference


def _subset(calib: Batches, n: int) -> list[Tensor]:
    """The first ``n`` calibration images, as batches."""
    out, have = [], 0
    for images, _ in calib:
        if have >= n:
            break
        out.append(images[: n - have])
        have += out[-1].shape[0]
    return out


@torch.no_grad()
def _capture(model: nn.Module, name: str, batches: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """All positional inputs and the output of submodule ``name`` over ``batches``."""
    module = model.get_submodule(name)
    ins: list[tuple[Tensor, ...]] = []
    outs: list[Tensor] = []

    def pre(_m, args):
        ins.append(tuple(a.detach().clone() for a in args))

    def post(_m, _args, out):
        outs.append(out.detach().clone())
        raise StopForward

    with hooks_on([(module, pre)], pre=True), hooks_on([(module, post)]):
        for x in batches:
            forward_until_stopped(model, x)
    if len(outs) != len(batches):
        raise EaqError(f"the forward pass never reached {name}")
    inputs = [torch.cat([row[k] for row in ins]) for k in range(len(ins[0]))]
    return inputs, torch.cat(outs)


def _objective(target: Tensor, scores: bool, config: RankingConfig) -> Callable[[Tensor], float]:
    if not scores or config.ranking_weight == 0:
        return lambda out: pearson(target, out)
    n = target.shape[-1]
    rows_all = target.reshape(-1, n).shape[0]
    n_rows = max(1, min(rows_all, RANK_MAX_PAIRS // max(1, n * (n - 1) // 2)))
    gen = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(rows_all, generator=gen)[:n_rows].to(target.device)
    target_rows = target.reshape(-1, n)[rows]

    def objective(out: Tensor) -> float:
        rank = ranking_loss(target_rows, out.reshape(-1, n)[rows], config.theta)
        return pearson(target, out) - config.ranking_weight * float(rank)

    return objective


def rank_search_(
    model: nn.Module, reference: nn.Module, calib: Batches, config: RankingConfig | None = None
) -> list[LayerSearch]:
    """Search the scales of every quantized layer of a quantized, calibrated ``model``.

    Args:
        model: The quantized model (quantizers calibrated), changed in place.
        reference: A float copy with the same module names (attention matmuls as modules).
        calib: Calibration batches; the first ``config.search_images`` images are used.
        config: Search settings.

    Returns:
        One :class:`LayerSearch` per searched layer, in module order.
    """
    config = config or RankingConfig()
    model.eval()
    reference.eval()
    batches = _subset(calib, config.search_images)
    if not batches:
        raise EaqError("the calibration set is empty")
    score_layers = {id(m.qk_matmul) for m in model.modules() if isinstance(m, QuantAttention)}
    alphas = config.alphas()
    rows = []
    for ref in quantizable_layers(model):
        layer = model.get_submodule(ref.name)
        if not isinstance(layer, QuantConv2d | QuantLinear | QuantMatMul) or not _knobs(layer):
            continue
        inputs, target = _capture(reference, ref.name, batches)
        objective = _objective(target, id(layer) in score_layers, config)
        before, after, chosen = search_layer_(layer, inputs, objective, alphas, config.rounds)
        rows.append(LayerSearch(ref.name, ref.kind, before, after, chosen))
    return rows


def _check(*, bias_correction: bool, **options) -> None:
    RankingConfig(**options)


@register_method(
    "ranking",
    "PTQ, then per-layer scale search for Pearson correlation + attention ranking (Liu 2021)",
    check=_check,
)
def ranking(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    search_steps: int = 100,
    rounds: int = 3,
    ranking_weight: float = 0.1,
    low: float = 0.5,
    high: float = 1.2,
    search_images: int = 64,
    bias_correction: bool = False,
    seed: int = 0,
) -> QuantSummary:
    config = RankingConfig(
        search_steps=search_steps,
        rounds=rounds,
        ranking_weight=ranking_weight,
        low=low,
        high=high,
        search_images=search_images,
        seed=seed,
    )
    if not calib:
        raise EaqError("the calibration set is empty")
    model.eval()
    reference = float_reference(model)
    summary = quantize_(model, plan)
    calibrate_(model, calib)
    t0 = time.perf_counter()
    rows = rank_search_(model, reference, calib, config)
    log.info(f"ranking: scales of {len(rows)} layers searched in {time.perf_counter() - t0:.1f}s")
    if bias_correction:
        bias_correct_(model, reference, calib)
    return summary
