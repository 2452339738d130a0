"""Bit-width assignment strategies: each turns sensitivities and an energy model into Plans.

Strategies are registered by name (like timm's ``register_model``) and called with a
:class:`StrategyContext` and their options; each returns one or more :class:`NamedPlan`.

=============  ============================================================================
strategy       what it does
=============  ============================================================================
``fp32``       no quantization (the baseline)
``uniform``    every layer at ``w_bits``/``a_bits``; ``float_kinds`` keeps kinds of layer in
               float (``[matmul]``: a ViT's attention matmuls)
``percentile`` the seed's eq. 6: ``S >= P_high`` -> 8, ``P_low <= S < P_high`` -> 6, else 4
``budget``     integer program (``scipy.optimize.milp``): minimise the summed sensitivity
               subject to ``energy <= budget``, one plan per budget (a Pareto sweep); with
               ``select: loss`` the program's plan and the uniform plans within the budget
               are scored by a measured loss (:class:`~eaq.mixed.selection.PlanScorer`)
               and the best is kept
=============  ============================================================================

A budget is a relative energy (``0.15``: 15 % of FP32) or the energy of a uniform plan
(``"W6A6"``, with the same first/last policy). With ``first_last_8bit`` the first and last
weight layers are fixed at W8A8 in every mixed plan, as in the seed.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from eaq.energy import ModelStats, energy, plan_energy
from eaq.errors import EaqError, choices_hint
from eaq.mixed.sensitivity import Sensitivity
from eaq.plan import LayerConfig, LayerRef, Plan, first_last_layers
from eaq.registry import Registry


@dataclass(frozen=True)
class NamedPlan:
    """A plan a strategy produced; ``label`` tells plans of one strategy call apart."""

    strategy: str
    plan: Plan
    label: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may use.

    Attributes:
        layers: the model's quantizable layers, in order.
        stats: per-layer statistics for the energy model.
        profile: energy profile name.
        base: settings other than the widths (granularity, observers, scheme).
        first_last_8bit: keep the first and last weight layer at W8A8.
        sensitivity: per-layer sensitivities (for the strategies that need them).
        plan_loss: measured loss of a whole plan (lower is better), for ``select: loss``.
    """

    layers: tuple[LayerRef, ...]
    stats: ModelStats
    profile: str = "seed"
    base: LayerConfig = field(default_factory=LayerConfig)
    first_last_8bit: bool = True
    sensitivity: Sensitivity | None = None
    plan_loss: Callable[[Plan], float] | None = None

    def uniform_plan(self, w_bits: int, a_bits: int) -> Plan:
        """Every layer at ``w_bits``/``a_bits``, with the base settings and first/last policy."""
        default = replace(self.base, w_bits=w_bits, a_bits=a_bits)
        return Plan(default=default, first_last_8bit=self.first_last_8bit)

    def fixed_layers(self) -> set[str]:
        """Layers held at W8A8 by the first/last policy."""
        return first_last_layers(self.layers) if self.first_last_8bit else set()

    def layer_plan(self, widths: dict[str, tuple[int, int]]) -> Plan:
        """A plan with one exact-name rule per layer (fixed layers at W8A8)."""
        fixed = self.fixed_layers()
        rules = []
        for ref in self.layers:
            w, a = (8, 8) if ref.name in fixed else widths[ref.name]
            rules.append((ref.name, replace(self.base, w_bits=w, a_bits=a)))
        return Plan(default=self.base, rules=tuple(rules), first_last_8bit=self.first_last_8bit)

    def need_sensitivity(self, strategy: str) -> Sensitivity:
        if self.sensitivity is None:
            raise EaqError(f"strategy {strategy!r} needs layer sensitivities")
        names = tuple(r.name for r in self.layers)
        if self.sensitivity.names != names:
            raise EaqError("the sensitivities were measured on a different set of layers")
        check_finite(self.layers, self.sensitivity.candidates, self.sensitivity.values)
        return self.sensitivity


StrategyFn = Callable[..., list[NamedPlan]]


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    fn: StrategyFn
    options: dict  # option name -> default
    needs_sensitivity: bool


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(
    name: str, summary: str, *, needs_sensitivity: bool = False
) -> Callable[[StrategyFn], StrategyFn]:
    """Register ``fn(ctx, **options) -> list[NamedPlan]``; its keyword-only args are options."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        params = inspect.signature(fn).parameters.values()
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        STRATEGIES.add(name, Strategy(name, summary, fn, options, needs_sensitivity))
        return fn

    return wrap


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)


def check_options(name: str, options: dict) -> None:
    """EaqError for option names the strategy does not take."""
    valid = get_strategy(name).options
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise EaqError(
            f"strategy {name!r} has no option(s) {', '.join(unknown)}; "
            + (choices_hint(valid) if valid else "it takes none")
        )


def make_plans(ctx: StrategyContext, name: str, options: dict | None = None) -> list[NamedPlan]:
    """Run strategy ``name`` with ``options``."""
    options = dict(options or {})
    check_options(name, options)
    return get_strategy(name).fn(ctx, **options)


def bit_distribution(plan: Plan, layers: Sequence[LayerRef]) -> dict[str, int]:
    """How many layers run at each width (``max(w, a)``; ``fp`` for float), e.g. ``{"4": 5}``."""
    resolved = plan.resolve(list(layers))
    counts: Counter = Counter()
    for ref in layers:
        cfg = resolved[ref.name]
        bits = [] if cfg is None else [b for b in (cfg.w_bits, cfg.a_bits) if b is not None]
        if ref.kind == "matmul" and cfg is not None:
            bits = [] if cfg.a_bits is None else [cfg.a_bits]
        counts["fp" if not bits else str(max(bits))] += 1
    return dict(
        sorted(counts.items(), key=lambda kv: (kv[0] == "fp", int(kv[0]) if kv[0] != "fp" else 0))
    )


def _check_bits(b, what: str) -> int:
    if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16:
        raise EaqError(f"{what} must be an integer in 2..16, got {b!r}")
    return b


@register_strategy("fp32", "no quantization: the FP32 baseline")
def _fp32(ctx: StrategyContext) -> list[NamedPlan]:
    return [NamedPlan("fp32", Plan(default=None, first_last_8bit=False))]


LAYER_KINDS = ("conv", "linear", "matmul")


@register_strategy(
    "uniform",
    "every layer at the same widths (first/last policy applied); float_kinds: kinds of "
    "layer kept in float (e.g. [matmul]: a ViT's attention matmuls)",
)
def _uniform(
    ctx: StrategyContext,
    *,
    w_bits: int = 8,
    a_bits: int | None = None,
    float_kinds: Sequence[str] = (),
) -> list[NamedPlan]:
    w = _check_bits(w_bits, "w_bits")
    a = w if a_bits is None else _check_bits(a_bits, "a_bits")
    if isinstance(float_kinds, str) or not all(k in LAYER_KINDS for k in float_kinds):
        raise EaqError(
            f"float_kinds must be a list of layer kinds, got {float_kinds!r}; "
            f"{choices_hint(list(LAYER_KINDS))}"
        )
    plan = ctx.uniform_plan(w, a)
    info: dict = {"w_bits": w, "a_bits": a}
    if float_kinds:
        rules = tuple((r.name, None) for r in ctx.layers if r.kind in float_kinds)
        if not rules:
            raise EaqError(f"float_kinds {list(float_kinds)} names no layer of this model")
        plan = replace(plan, rules=rules)
        info["float_kinds"] = sorted(float_kinds)
    return [NamedPlan("uniform", plan, info=info)]


@register_strategy(
    "percentile",
    "the seed's eq. 6: top (100-high)% most sensitive -> 8, middle -> 6, bottom low% -> 4",
    needs_sensitivity=True,
)
def _percentile(
    ctx: StrategyContext,
    *,
    low: float = 25.0,
    high: float = 75.0,
    bits: Sequence[int] = (4, 6, 8),
    reference: int | None = None,
) -> list[NamedPlan]:
    sens = ctx.need_sensitivity("percentile")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or not (
        0 <= low <= high <= 100
    ):
        raise EaqError(f"percentile thresholds need 0 <= low <= high <= 100, got {low}, {high}")
    if len(bits) != 3:
        raise EaqError(f"percentile 'bits' needs 3 widths (low, mid, high), got {list(bits)}")
    lo_b, mid_b, hi_b = (_check_bits(b, "percentile bits") for b in bits)
    ref_bits = lo_b if reference is None else _check_bits(reference, "reference")
    s = sens.column((ref_bits, ref_bits))
    fixed = ctx.fixed_layers()
    free = [i for i, ref in enumerate(ctx.layers) if ref.name not in fixed]
    if not free:
        raise EaqError("no layer left to assign: every layer is fixed at 8 bits")
    p_low, p_high = np.percentile(s[free], [low, high])
    widths = {}
    for i in free:
        b = hi_b if s[i] >= p_high else mid_b if s[i] >= p_low else lo_b
        widths[ctx.layers[i].name] = (b, b)
    info = {"low": low, "high": high, "p_low": float(p_low), "p_high": float(p_high)}
    return [NamedPlan("percentile", ctx.layer_plan(widths), info=info)]


_UNIFORM_BUDGET = re.compile(r"W(\d+)A(\d+)")


def layer_energy_table(ctx: StrategyContext, candidates: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[L, C]`` energy of each layer at each candidate (layer energies are independent)."""
    table = np.zeros((len(ctx.stats.layers), len(candidates)))
    for j, (w, a) in enumerate(candidates):
        report = energy(ctx.stats, [(w, a)] * len(ctx.stats.layers), ctx.profile)
        table[:, j] = [row.energy for row in report.layers]
    return table


def _budget_value(ctx: StrategyContext, budget, energy_fp32: float) -> tuple[float, str]:
    """Absolute energy of a budget and its label."""
    if isinstance(budget, str):
        m = _UNIFORM_BUDGET.fullmatch(budget.strip())
        if not m:
            raise EaqError(
                f"budget {budget!r} must be a relative energy (0 < b <= 1) or a uniform plan "
                "such as 'W6A6'"
            )
        w, a = int(m[1]), int(m[2])
        return plan_energy(ctx.stats, ctx.uniform_plan(w, a), ctx.profile).energy, f"W{w}A{a}"
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise EaqError(f"budget {budget!r} must be a relative energy in (0, 1] or e.g. 'W6A6'")
    return float(budget) * energy_fp32, f"{float(budget):.3f}"


def check_finite(layers: Sequence[LayerRef], candidates, values: np.ndarray) -> None:
    """EaqError naming the first layer and candidate whose sensitivity is NaN or infinite."""
    bad = np.argwhere(~np.isfinite(np.asarray(values, dtype=np.float64)))
    if len(bad):
        i, c = bad[0]
        raise EaqError(
            f"the sensitivity of layer {layers[i].name} at W{candidates[c][0]}A{candidates[c][1]}"
            f" is {values[i, c]} ({len(bad)} non-finite values in all); strategies need finite "
            "ones: check the model's outputs on the calibration images"
        )


def solve_budget(
    ctx: StrategyContext,
    candidates: Sequence[tuple[int, int]],
    sens: np.ndarray,
    budget_energy: float,
) -> dict[str, tuple[int, int]] | None:
    """Widths minimising summed ``sens`` with energy <= ``budget_energy`` (None: infeasible)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    table = layer_energy_table(ctx, candidates)
    fixed = ctx.fixed_layers()
    free = [i for i, ref in enumerate(ctx.layers) if ref.name not in fixed]
    fixed_energy = sum(
        energy(ctx.stats, [(8, 8)] * len(ctx.layers), ctx.profile).layers[i].energy
        for i, ref in enumerate(ctx.layers)
        if ref.name in fixed
    )
    e = table[free]
    check_finite(ctx.layers, candidates, sens)
    s = np.asarray(sens[free], dtype=np.float64)
    n_free, n_c = e.shape
    scale_s = max(float(np.abs(s).max()), 1e-30)
    scale_e = max(float(e.max()), 1e-30)
    cost = (s / scale_s + 1e-6 * e / scale_e).ravel()  # tiny energy tie-break
    one_each = LinearConstraint(np.kron(np.eye(n_free), np.ones(n_c)), 1, 1)
    within = LinearConstraint(e.ravel()[None], -np.inf, budget_energy - fixed_energy)
    res = milp(
        cost,
        constraints=[one_each, within],
        integrality=np.ones(n_free * n_c),
        bounds=Bounds(0, 1),
        options={"time_limit": 60},
    )
    if res.status == 2:  # infeasible: no plan within the budget
        return None
    if res.status != 0 or res.x is None:
        raise EaqError(f"the budget's integer program did not solve: {res.message}")
    choice = np.asarray(res.x).reshape(n_free, n_c).argmax(axis=1)
    return {ctx.layers[i].name: tuple(candidates[c]) for i, c in zip(free, choice, strict=True)}


def cheapest_energy(ctx: StrategyContext, candidates: Sequence[tuple[int, int]]) -> float:
    """Energy of the cheapest plan the candidates allow (fixed layers at W8A8)."""
    table = layer_energy_table(ctx, candidates)
    fixed = ctx.fixed_layers()
    full8 = energy(ctx.stats, [(8, 8)] * len(ctx.layers), ctx.profile)
    return float(
        sum(
            full8.layers[i].energy if ref.name in fixed else table[i].min()
            for i, ref in enumerate(ctx.layers)
        )
    )


@register_strategy(
    "budget",
    "integer program: minimise summed sensitivity subject to energy <= budget (scipy milp)",
    needs_sensitivity=True,
)
def _budget(
    ctx: StrategyContext, *, budgets: Sequence = (0.15,), select: str = "sensitivity"
) -> list[NamedPlan]:
    sens = ctx.need_sensitivity("budget")
    if select not in SELECT:
        raise EaqError(f"budget 'select' {select!r} is unknown; {choices_hint(SELECT)}")
    if select == "loss" and ctx.plan_loss is None:
        raise EaqError("budget with select 'loss' needs a model and data to score plans")
    if isinstance(budgets, (str, int, float)):
        budgets = [budgets]
    if not budgets:
        raise EaqError("strategy 'budget' needs at least one budget")
    candidates = list(sens.candidates)
    fp32 = energy(ctx.stats, [(None, None)] * len(ctx.stats.layers), ctx.profile).energy_fp32
    cheapest = cheapest_energy(ctx, candidates)
    out = []
    for b in budgets:
        value, label = _budget_value(ctx, b, fp32)
        if value < cheapest * (1 - 1e-9):
            raise EaqError(
                f"budget {label} (relative energy {value / fp32:.4f}) is below the cheapest plan "
                f"with widths {', '.join(f'W{w}A{a}' for w, a in candidates)}: "
                f"minimum relative energy {cheapest / fp32:.4f}"
            )
        widths = solve_budget(ctx, candidates, sens.values, value * (1 + 1e-12))
        if widths is None:
            raise EaqError(f"budget {label}: the integer program found no plan")
        info = {"budget": b, "budget_relative": value / fp32, "select": select}
        plan = ctx.layer_plan(widths)
        if select == "loss":
            plan, info["candidates"] = _select_by_loss(ctx, plan, candidates, value)
        out.append(NamedPlan("budget", plan, label=label, info=info))
    return out


SELECT = ("sensitivity", "loss")


def _select_by_loss(
    ctx: StrategyContext, milp_plan: Plan, candidates: Sequence[tuple[int, int]], budget: float
) -> tuple[Plan, list[dict]]:
    """The integer program's plan or a uniform plan within ``budget``: the lowest measured loss.

    Returns the chosen plan and, per candidate, ``{"name", "relative_energy", "loss",
    "chosen"}`` (the program's plan is named ``milp``).
    """
    options = [("milp", milp_plan)]
    layers = list(ctx.layers)
    seen = [milp_plan.resolve(layers)]
    for w, a in sorted(set(candidates)):
        plan = ctx.uniform_plan(w, a)
        resolved = plan.resolve(layers)
        if resolved in seen:  # the program chose this uniform plan: score it once
            continue
        if plan_energy(ctx.stats, plan, ctx.profile).energy <= budget * (1 + 1e-9):
            options.append((f"W{w}A{a}", plan))
            seen.append(resolved)
    scored = []
    for name, plan in options:
        report = plan_energy(ctx.stats, plan, ctx.profile)
        loss = ctx.plan_loss(plan)
        if not np.isfinite(loss):
            raise EaqError(f"the measured loss (KL) of plan {name} is {loss}; it must be finite")
        scored.append((loss, name, plan, report.relative_energy))
    best = min(range(len(scored)), key=lambda i: (scored[i][0], i))  # ties: the program's plan
    rows = [
        {"name": name, "relative_energy": rel, "loss": loss, "chosen": i == best}
        for i, (loss, name, _, rel) in enumerate(scored)
    ]
    return scored[best][2], rows


__all__ = [
    "NamedPlan",
    "Strategy",
    "StrategyContext",
    "bit_distribution",
    "cheapest_energy",
    "check_options",
    "get_strategy",
    "layer_energy_table",
    "make_plans",
    "register_strategy",
    "solve_budget",
    "strategy_names",
]
