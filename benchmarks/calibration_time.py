"""Calibration time of PTQ methods per model, against plain PTQ measured in the same run.

For each model and method: the seconds :func:`eaq.methods.quantize_model_` takes to quantize and
calibrate the model on ``--calib`` images (random weights and images: the time does not depend
on them), and the ratio to plain ``ptq``. A method may carry options after a colon, e.g.
``ranking:search_steps=20,rounds=1``. Not a test.

    python benchmarks/calibration_time.py [--models M ...] [--methods SPEC ...] [--calib 64]
        [--w-bits 4] [--a-bits 4] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import yaml

from eaq.methods import check_method_options, quantize_model_
from eaq.models import create_model, get_model_info
from eaq.plan import Plan
from eaq.table import format_table


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` -> ``(name, options)``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = yaml.safe_load(value)
    return name, check_method_options(name, options)


def bench(model_name: str, specs: list[str], n: int, w_bits: int, a_bits: int) -> list[dict]:
    torch.manual_seed(0)
    info = get_model_info(model_name)
    model = create_model(model_name, weights="random").eval()
    s = info.input_size
    calib = [
        (torch.randn(min(32, n - i), 3, s, s), torch.zeros(min(32, n - i), dtype=torch.long))
        for i in range(0, n, 32)
    ]
    plan = Plan.uniform(w_bits, a_bits)
    rows = []
    for spec in ["ptq", *[x for x in specs if x != "ptq"]]:
        name, options = parse_spec(spec)
        work = copy.deepcopy(model)
        start = time.perf_counter()
        quantize_model_(work, plan, calib, name, options)
        rows.append(
            {
                "model": model_name,
                "method": spec,
                "calib_images": n,
                "seconds": time.perf_counter() - start,
            }
        )
    for r in rows:
        r["x_ptq"] = r["seconds"] / rows[0]["seconds"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20_cifar", "deit_tiny_cifar"])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["ptq", "biascorr", "gptq", "ranking:search_steps=20,rounds=1"],
    )
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=int, default=4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [
        r for m in args.models for r in bench(m, args.methods, args.calib, args.w_bits, args.a_bits)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        format_table(
            ["model", "method", "images", "seconds", "x ptq"],
            [
                (
                    r["model"],
                    r["method"],
                    r["calib_images"],
                    round(r["seconds"], 2),
                    round(r["x_ptq"], 1),
                )
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
