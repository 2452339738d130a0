"""The energy figures of the seed study, counted correctly and the seed's way.

Prints, for each model and profile, relative energy at 8/6/4 bits (every layer at that width,
as in the seed's Tables 1-2) and the MAC and memory shares at 8 bits and FP32. For DeiT-Tiny
it also prints the seed's miscount (each Linear's MACs once per call, in*out, no attention
matmuls), which is what reproduces the seed's Table 2 (0.241 / 0.180 / 0.120).

    python benchmarks/energy_tables.py
"""

from __future__ import annotations

from eaq.energy import ModelStats, collect_stats, plan_energy, seed_miscount
from eaq.models import create_model
from eaq.plan import Plan
from eaq.table import format_table

MODELS = [("resnet18", 100, 32), ("resnet18_cifar", 100, 32), ("deit_tiny", 1000, 224)]
PROFILES = ["seed", "horowitz45nm"]
FP32 = Plan(default=None)


def row(label: str, stats: ModelStats, profile: str) -> tuple:
    rel = [
        plan_energy(stats, Plan.uniform(b, b, first_last_8bit=False), profile).relative_energy
        for b in (8, 6, 4)
    ]
    e8 = plan_energy(stats, Plan.uniform(8, 8, first_last_8bit=False), profile)
    fp = plan_energy(stats, FP32, profile)
    return (
        label,
        profile,
        round(stats.total_macs / 1e6, 2),
        *(round(r, 4) for r in rel),
        round(100 * e8.mac_share, 1),
        round(100 * fp.mac_share, 1),
    )


def main() -> None:
    rows = []
    for name, classes, size in MODELS:
        model = create_model(name, num_classes=classes, input_size=size, weights="random")
        stats = collect_stats(model, size)
        for profile in PROFILES:
            rows.append(row(f"{name}@{size}", stats, profile))
        if name == "deit_tiny":
            rows.append(
                row(f"{name}@{size} (seed's miscount)", seed_miscount(stats, model), "seed")
            )
    print("relative energy, every layer at b bits; MAC share of the energy in percent")
    print(
        format_table(
            ["model", "profile", "MMACs", "rel 8b", "rel 6b", "rel 4b", "MAC % 8b", "MAC % FP32"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
