"""Budget plans chosen by measured loss (``select: loss``) and the plan scorer."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from eaq.energy import plan_energy
from eaq.errors import EaqError
from eaq.mixed import PlanScorer, make_plans
from eaq.models import create_model
from eaq.plan import Plan
from tests.mixed.test_strategies import _ctx


def _widths(ctx, plan):
    resolved = plan.resolve(list(ctx.layers))
    return {name: (c.w_bits, c.a_bits) for name, c in resolved.items()}


def test_select_loss_keeps_the_lowest_measured_loss():
    ctx = _ctx(n=8, seed=5)
    [milp] = make_plans(ctx, "budget", {"budgets": [0.2]})  # between W6A6 and W8A8
    uniform6 = ctx.uniform_plan(6, 6)
    assert _widths(ctx, milp.plan) != _widths(ctx, uniform6)  # the program mixes widths

    # a loss that prefers the uniform 6-bit plan: it is chosen
    calls = []

    def loss(plan):
        calls.append(plan)
        return 0.0 if _widths(ctx, plan) == _widths(ctx, uniform6) else 1.0

    [p] = make_plans(replace(ctx, plan_loss=loss), "budget", {"budgets": [0.2], "select": "loss"})
    assert _widths(ctx, p.plan) == _widths(ctx, uniform6)
    rows = {r["name"]: r for r in p.info["candidates"]}
    # candidates: the program's plan and the uniform plans within the budget (not W8A8)
    assert set(rows) == {"milp", "W4A4", "W6A6"}
    assert rows["W6A6"]["chosen"] and not rows["milp"]["chosen"]
    assert len(calls) == 3

    # a loss that prefers mixing: the program's plan is kept
    def loss2(plan):
        return 0.0 if _widths(ctx, plan) == _widths(ctx, milp.plan) else 1.0

    [q] = make_plans(replace(ctx, plan_loss=loss2), "budget", {"budgets": [0.2], "select": "loss"})
    assert _widths(ctx, q.plan) == _widths(ctx, milp.plan)
    assert plan_energy(ctx.stats, q.plan, "seed").relative_energy <= 0.2 + 1e-9


def test_select_ties_keep_the_program_plan_and_bad_options_fail():
    ctx = _ctx(n=8, seed=5)
    [milp] = make_plans(ctx, "budget", {"budgets": [0.5]})
    [p] = make_plans(
        replace(ctx, plan_loss=lambda plan: 0.0), "budget", {"budgets": [0.5], "select": "loss"}
    )
    assert _widths(ctx, p.plan) == _widths(ctx, milp.plan)
    with pytest.raises(EaqError, match="needs a model and data"):
        make_plans(ctx, "budget", {"budgets": [0.5], "select": "loss"})
    with pytest.raises(EaqError, match="'select' 'accuracy' is unknown; valid: sensitivity, loss"):
        make_plans(ctx, "budget", {"budgets": [0.5], "select": "accuracy"})


def test_plan_scorer_measures_kl_of_logits():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", weights="random").eval()
    batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
    score = PlanScorer(model, calib=batches, held_out=batches)
    assert score(Plan(default=None, first_last_8bit=False)) == 0.0
    s8, s4 = score(Plan.uniform(8, 8)), score(Plan.uniform(4, 4))
    assert 0.0 < s8 < s4
    assert score.calls == 3
    assert score(Plan.uniform(4, 4)) == s4 and score.calls == 3  # measured once per plan
    with pytest.raises(EaqError, match="held-out"):
        PlanScorer(model, calib=batches, held_out=[])
