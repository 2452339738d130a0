"""``eaq energy``: per-layer MACs, memory, BOPs and energy of a model under a plan.

No data and no weights: the model is built with random weights and run once on zeros.
"""

from __future__ import annotations

import argparse
import csv

from eaq.cli.common import add_model_args, add_plan_args, check_positive, plan_from_args, print_json
from eaq.energy import MAC_RULES, collect_stats, energy, get_profile, layer_widths, profile_names
from eaq.errors import EaqError
from eaq.models import create_model, get_model_info
from eaq.table import format_table

CSV_FIELDS = (
    "name", "kind", "w_bits", "a_bits", "macs", "weight_elems", "input_elems", "output_elems",
    "bops", "mac_energy", "mem_energy", "energy", "energy_fp32",
)  # fmt: skip

LAYER_FIELDS = CSV_FIELDS[:9]
LAYER_COLUMNS = ("layer", "kind", "w", "a", "MACs", "weights", "in", "out", "BOPs")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "energy",
        help="MACs, memory, BOPs and energy of a model under a plan (no data needed)",
        description=(
            "Count each layer's MACs (Linear per token, attention Q*K^T and softmax*V included), "
            "weights and activations in one forward pass at --input-size, and cost a plan with a "
            "cost profile: E = sum N_MAC*E_MAC + sum N_mem*E_mem, split into MAC and memory parts, "
            f"absolute and relative to FP32. Profiles: {', '.join(profile_names())} or a YAML "
            "file. Example (the seed's Table 1): eaq energy --model resnet18 --num-classes 100 "
            "--input-size 32 --profile seed --w-bits 8 --a-bits 8 --quantize-first-last"
        ),
    )
    add_model_args(p, weights=False)
    p.add_argument(
        "--input-size", type=int, default=None, help="input height = width (default: the model's)"
    )
    add_plan_args(p)
    g = p.add_argument_group("energy model")
    g.add_argument(
        "--profile",
        default="horowitz45nm",
        help=f"cost profile: {', '.join(profile_names())} or a YAML file (default horowitz45nm)",
    )
    g.add_argument(
        "--mac-rule",
        choices=MAC_RULES,
        default=None,
        help="MAC cost under mixed widths: bw_ba (b_w*b_a), max (max(b_w,b_a)^2) or seed "
        "(one b per layer for MACs and memory); default: the profile's",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--csv", default=None, metavar="FILE", help="also write the per-layer rows to FILE"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    plan = plan_from_args(args)
    check_positive("--num-classes", args.num_classes)
    check_positive("--input-size", args.input_size)
    info = get_model_info(args.model)
    input_size = args.input_size if args.input_size is not None else info.input_size
    model = create_model(
        args.model, num_classes=args.num_classes, input_size=args.input_size, weights="random"
    )
    stats = collect_stats(model, input_size)
    report = energy(stats, layer_widths(stats, plan), profile, args.mac_rule)
    rows = [
        {**layer.__dict__, **row.to_dict()}
        for layer, row in zip(stats.layers, report.layers, strict=True)
    ]
    if args.csv is not None:
        try:
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        except OSError as e:
            raise EaqError(f"cannot write {args.csv}: {e.strerror}") from None
    if args.json:
        out = report.to_dict()
        out.update(
            model=args.model,
            num_classes=args.num_classes or info.num_classes,
            input_size=list(stats.input_size),
            profile_description=profile.description,
            plan=plan.to_dict(),
            weight_elems=stats.total_weight_elems,
            macs_by_kind=stats.macs_by_kind(),
            elementwise=stats.elementwise,
            layers=rows,
        )
        print_json(out)
        return 0
    u = profile.unit
    _, h, w = stats.input_size
    print(f"{args.model} at {h}x{w}, profile {profile.name} ({u}), MAC rule {report.mac_rule}")
    print(f"  {profile.description}")
    print(
        format_table(
            [*LAYER_COLUMNS, f"E_mac 1e6 {u}", f"E_mem 1e6 {u}", f"E 1e6 {u}", "% of E"],
            [
                (
                    *(r[k] for k in LAYER_FIELDS),
                    _num(r["mac_energy"]),
                    _num(r["mem_energy"]),
                    _num(r["energy"]),
                    round(100 * r["energy"] / report.energy, 2) if report.energy else 0.0,
                )
                for r in rows
            ],
        )
    )
    print()
    kinds = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in stats.macs_by_kind().items())
    print(f"MACs {report.macs / 1e6:.2f} M ({kinds}); BOPs {report.bops / 1e9:.3f} G "
          f"({report.relative_bops:.4f} of FP32)")  # fmt: skip
    print(
        f"energy {_eng(report.energy)} {u} = MAC {_eng(report.mac_energy)} "
        f"({100 * report.mac_share:.1f}%) + memory {_eng(report.mem_energy)} "
        f"({100 * report.memory_share:.1f}%)"
    )
    print(f"FP32 {_eng(report.energy_fp32)} {u}; relative energy {report.relative_energy:.4f}")
    ew = ", ".join(f"{k} {v}" for k, v in stats.elementwise.items() if v)
    print(f"element-wise elements per image (not costed): {ew or 'none'}")
    return 0


def _num(x: float) -> float:
    """Millions of the profile's unit, four significant digits, for the table."""
    return float(f"{x / 1e6:.4g}")


def _eng(x: float) -> str:
    return f"{x:.4g}"
