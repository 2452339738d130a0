"""Mixed precision: per-layer sensitivity, assignment strategies (plans) and Pareto fronts."""

from eaq.mixed.pareto import best_within, dominates, pareto_front
from eaq.mixed.selection import PlanScorer, plan_sha256
from eaq.mixed.sensitivity import MEASURES, Sensitivity, candidate_grid, layer_sensitivity
from eaq.mixed.strategies import (
    NamedPlan,
    Strategy,
    StrategyContext,
    bit_distribution,
    cheapest_energy,
    check_options,
    get_strategy,
    layer_energy_table,
    make_plans,
    register_strategy,
    solve_budget,
    strategy_names,
)

__all__ = [
    "MEASURES",
    "NamedPlan",
    "PlanScorer",
    "Sensitivity",
    "Strategy",
    "StrategyContext",
    "best_within",
    "bit_distribution",
    "candidate_grid",
    "cheapest_energy",
    "check_options",
    "dominates",
    "get_strategy",
    "layer_energy_table",
    "layer_sensitivity",
    "make_plans",
    "pareto_front",
    "plan_sha256",
    "register_strategy",
    "solve_budget",
    "strategy_names",
]
