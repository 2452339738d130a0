"""Strategies: uniform, the seed's percentile rule, and the budgeted integer program."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eaq.energy import LayerStats, ModelStats, energy, plan_energy
from eaq.errors import EaqError
from eaq.mixed import (
    Sensitivity,
    StrategyContext,
    bit_distribution,
    check_options,
    layer_energy_table,
    make_plans,
    strategy_names,
)
from eaq.plan import LayerRef

CANDS = ((4, 4), (6, 6), (8, 8))


def _ctx(n=6, first_last=True, seed=0):
    rng = np.random.default_rng(seed)
    layers = tuple(LayerRef(f"l{i}", "conv") for i in range(n))
    stats = ModelStats(
        tuple(
            LayerStats(
                f"l{i}",
                "conv",
                int(rng.integers(100, 10000)),
                int(rng.integers(10, 500)),
                int(rng.integers(10, 500)),
                int(rng.integers(10, 500)),
            )
            for i in range(n)
        )
    )
    base = rng.uniform(1, 100, n)
    values = np.stack([base * 16, base * 4, base], axis=1)  # S halves... per 2 bits
    sens = Sensitivity(tuple(r.name for r in layers), ("conv",) * n, CANDS, values, "l2", 8)
    return StrategyContext(layers, stats, "seed", first_last_8bit=first_last, sensitivity=sens)


def test_registry():
    assert {"fp32", "uniform", "percentile", "budget"} <= set(strategy_names())
    with pytest.raises(EaqError, match="valid: budgets"):
        check_options("budget", {"budget": 0.1})
    with pytest.raises(EaqError, match="unknown strategy"):
        make_plans(_ctx(), "greedy")


def test_uniform_and_fp32():
    ctx = _ctx()
    [p] = make_plans(ctx, "uniform", {"w_bits": 6})
    assert bit_distribution(p.plan, ctx.layers) == {"6": 4, "8": 2}
    [f] = make_plans(ctx, "fp32")
    assert plan_energy(ctx.stats, f.plan, "seed").relative_energy == pytest.approx(1.0)


def test_uniform_with_a_kind_of_layer_in_float():
    layers = (
        LayerRef("stem", "conv"),
        LayerRef("qkv", "linear"),
        LayerRef("qk", "matmul"),
        LayerRef("av", "matmul"),
        LayerRef("head", "linear"),
    )
    stats = ModelStats(tuple(LayerStats(r.name, r.kind, 1000, 10, 10, 10) for r in layers))
    ctx = StrategyContext(layers, stats, "seed")
    [with_mm] = make_plans(ctx, "uniform", {"w_bits": 4})
    [without] = make_plans(ctx, "uniform", {"w_bits": 4, "float_kinds": ["matmul"]})
    resolved = without.plan.resolve(list(layers))
    assert resolved["qk"] is None and resolved["av"] is None
    assert resolved["qkv"].w_bits == 4 and resolved["stem"].w_bits == 8  # first/last policy
    assert without.info["float_kinds"] == ["matmul"]
    e_with = plan_energy(stats, with_mm.plan, "seed").energy
    assert plan_energy(stats, without.plan, "seed").energy > e_with  # float matmuls cost more
    with pytest.raises(EaqError, match="float_kinds must be a list of layer kinds.*valid"):
        make_plans(ctx, "uniform", {"float_kinds": ["attention"]})
    with pytest.raises(EaqError, match="names no layer"):
        make_plans(_ctx(), "uniform", {"float_kinds": ["matmul"]})


def test_percentile_follows_eq6():
    ctx = _ctx(n=10)
    [p] = make_plans(ctx, "percentile")
    resolved = p.plan.resolve(list(ctx.layers))
    s = ctx.sensitivity.column((4, 4))
    free = list(range(1, 9))
    lo, hi = np.percentile(s[free], [25, 75])
    for i in free:
        want = 8 if s[i] >= hi else 6 if s[i] >= lo else 4
        assert resolved[f"l{i}"].w_bits == want == resolved[f"l{i}"].a_bits
    assert resolved["l0"].w_bits == resolved["l9"].w_bits == 8  # first/last policy
    with pytest.raises(EaqError, match="thresholds"):
        make_plans(ctx, "percentile", {"low": 80, "high": 20})


@pytest.mark.parametrize("first_last", [True, False])
def test_budget_is_optimal_and_within_budget(first_last):
    ctx = _ctx(n=5, first_last=first_last, seed=3)
    sens = ctx.sensitivity.values

    def relative(w):
        return energy(ctx.stats, [(int(b), int(b)) for b in w], "seed").relative_energy

    fixed = ctx.fixed_layers()
    [u4] = make_plans(ctx, "uniform", {"w_bits": 4})
    [u8] = make_plans(ctx, "uniform", {"w_bits": 8})
    e4 = plan_energy(ctx.stats, u4.plan, "seed").relative_energy
    e8 = plan_energy(ctx.stats, u8.plan, "seed").relative_energy
    for b in ("W4A4", e4 + 0.3 * (e8 - e4), e4 + 0.7 * (e8 - e4), "W6A6"):
        [p] = make_plans(ctx, "budget", {"budgets": [b]})
        budget = p.info["budget_relative"]
        w = np.array([p.plan.resolve(list(ctx.layers))[r.name].w_bits for r in ctx.layers])
        assert relative(w) <= budget + 1e-9
        got = sum(sens[i, [4, 6, 8].index(w[i])] for i in range(5) if f"l{i}" not in fixed)
        best = min(  # brute force over all assignments
            sum(sens[i, [4, 6, 8].index(c[i])] for i in range(5) if f"l{i}" not in fixed)
            for c in itertools.product((4, 6, 8), repeat=5)
            if all(c[i] == 8 for i in range(5) if f"l{i}" in fixed) and relative(c) <= budget + 1e-9
        )
        assert got == pytest.approx(best, rel=1e-6)


def test_budget_at_uniform_energy_never_worse_than_uniform():
    ctx = _ctx(n=8, seed=5)
    [p] = make_plans(ctx, "budget", {"budgets": ["W6A6"]})
    [u] = make_plans(ctx, "uniform", {"w_bits": 6})
    e = lambda plan: plan_energy(ctx.stats, plan, "seed").energy  # noqa: E731
    assert e(p.plan) <= e(u.plan) * (1 + 1e-9)
    s = ctx.sensitivity.values
    summed = lambda plan: sum(  # noqa: E731
        s[i, [4, 6, 8].index(plan.resolve(list(ctx.layers))[f"l{i}"].w_bits)] for i in range(1, 7)
    )
    assert summed(p.plan) <= summed(u.plan) + 1e-9


def test_budget_below_cheapest_names_minimum():
    ctx = _ctx()
    with pytest.raises(EaqError, match="below the cheapest plan.*minimum relative energy"):
        make_plans(ctx, "budget", {"budgets": [0.001]})
    with pytest.raises(EaqError, match="relative energy"):
        make_plans(ctx, "budget", {"budgets": ["cheap"]})


def test_layer_energy_table_sums_to_plan_energy():
    ctx = _ctx(first_last=False)
    table = layer_energy_table(ctx, CANDS)
    choice = [0, 2, 1, 1, 0, 2]
    widths = [CANDS[c] for c in choice]
    assert table[np.arange(6), choice].sum() == pytest.approx(
        energy(ctx.stats, widths, "seed").energy
    )


def test_a_nan_sensitivity_is_an_error_not_a_silent_energy_minimum():
    from dataclasses import replace

    ctx = _ctx(n=6, first_last=False, seed=1)
    [good] = make_plans(ctx, "budget", {"budgets": ["W6A6"]})
    values = ctx.sensitivity.values.copy()
    values[2, 1] = np.nan
    bad = replace(ctx, sensitivity=replace(ctx.sensitivity, values=values))
    with pytest.raises(EaqError, match=r"layer l2 at W6A6 is nan \(1 non-finite"):
        make_plans(bad, "budget", {"budgets": ["W6A6"]})
    # read as a huge number (what a nan_to_num does), it swamps every other sensitivity and
    # the program only minimises its energy tie-break: another plan
    values[2, 1] = 1e30
    swamped = replace(ctx, sensitivity=replace(ctx.sensitivity, values=values))
    [p] = make_plans(swamped, "budget", {"budgets": ["W6A6"]})
    assert p.plan != good.plan
