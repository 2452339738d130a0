"""Energy model: per-layer statistics from one forward pass, cost profiles, energy and BOPs.

Typical use::

    stats = collect_stats(model, 224)                   # once per model and input size
    report = plan_energy(stats, plan, "horowitz45nm")   # EnergyReport: per layer and totals
"""

from eaq.energy.cost import (
    EnergyReport,
    LayerEnergy,
    energy,
    layer_widths,
    plan_energy,
)
from eaq.energy.profiles import (
    MAC_RULES,
    CostProfile,
    get_profile,
    profile_names,
    register_profile,
)
from eaq.energy.stats import LayerStats, ModelStats, collect_stats, seed_miscount

__all__ = [
    "MAC_RULES",
    "CostProfile",
    "EnergyReport",
    "LayerEnergy",
    "LayerStats",
    "ModelStats",
    "collect_stats",
    "energy",
    "get_profile",
    "layer_widths",
    "plan_energy",
    "profile_names",
    "register_profile",
    "seed_miscount",
]
