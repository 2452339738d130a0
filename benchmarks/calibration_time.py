"""Calibration time of PTQ methods per model, against plain PTQ measured in the same run.

For each model and method: the seconds :func:`eaq.methods.quantize_model_` takes to quantize and
calibrate the model on ``--calib`` images (random weights and images: the time does not depend
on them), and the ratio to plain ``ptq``. A method may carry options after a colon, e.g.
``ranking:search_steps=20,rounds=1``. With ``--whole-passes``, each method is also timed with
:class:`eaq.nn.hooks.ProgressiveReplay` switched off (sequential GPTQ and bias correction then
run every pass from the image), and the speed-up of the replay is printed beside it. Not a test.

With ``--studies``, nothing is run: the calibration seconds that finished studies stored with
each row (the real checkpoints and training images on the machine that ran them) are
summarised per model, configuration and method, over the seeds (mean, min, max).

    python benchmarks/calibration_time.py [--models M ...] [--methods SPEC ...] [--calib 64]
        [--w-bits 4] [--a-bits 4] [--whole-passes] [--json]
    python benchmarks/calibration_time.py --studies runs/ptq-targets-cifar100 results/X.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from eaq.errors import EaqError
from eaq.methods import check_method_options, quantize_model_
from eaq.models import create_model, get_model_info
from eaq.nn.hooks import ProgressiveReplay
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


def _seconds(model, plan, calib, name, options, replay: bool = True) -> float:
    work = copy.deepcopy(model)
    before = ProgressiveReplay.before
    if not replay:
        ProgressiveReplay.before = lambda *_: contextlib.nullcontext()
    try:
        start = time.perf_counter()
        quantize_model_(work, plan, calib, name, options)
        return time.perf_counter() - start
    finally:
        ProgressiveReplay.before = before


def bench(
    model_name: str, specs: list[str], n: int, w_bits: int, a_bits: int, whole: bool = False
) -> list[dict]:
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
        row = {
            "model": model_name,
            "method": spec,
            "calib_images": n,
            "seconds": _seconds(model, plan, calib, name, options),
        }
        if whole:
            row["whole_passes_seconds"] = _seconds(model, plan, calib, name, options, False)
            row["replay_speedup"] = row["whole_passes_seconds"] / row["seconds"]
        rows.append(row)
    for r in rows:
        r["x_ptq"] = r["seconds"] / rows[0]["seconds"]
    return rows


def stored_rows(path: Path) -> list[dict]:
    """The result rows of a study folder or of a rows file (``eaq tables`` writes them)."""
    from eaq.study import Store

    if path.is_dir():
        with Store.open_folder(path) as store:
            return store.results()
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())["rows"]
    raise EaqError(f"{path}: not a study folder or a results .json file")


def from_studies(paths: list[Path]) -> list[dict]:
    """Calibration seconds per (model, config, method) over the stored rows' seeds."""
    from eaq.study.report import method_label

    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        for r in stored_rows(path):
            if r["method"] == "none":
                continue
            key = (r["model"], r["config"], method_label(r), r["calib_size"])
            groups.setdefault(key, []).append(r)
    out = []
    for (model, config, method, n), rows in sorted(groups.items()):
        secs = [r["calib_seconds"] for r in rows]
        out.append(
            {
                "model": model,
                "config": config,
                "method": method,
                "calib_images": n,
                "seeds": len(rows),
                "seconds": statistics.fmean(secs),
                "min_seconds": min(secs),
                "max_seconds": max(secs),
            }
        )
    return out


def main() -> int:
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
    p.add_argument(
        "--whole-passes",
        action="store_true",
        help="also time each method without replaying finished blocks, and print the speed-up",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--studies",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="summarise the calibration time stored by finished studies (folders or results "
        "files) instead of running anything",
    )
    args = p.parse_args()
    if args.studies:
        try:
            rows = from_studies(args.studies)
        except EaqError as e:
            print(f"calibration_time: error: {e}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(
            format_table(
                ["model", "config", "method", "images", "seeds", "mean s", "min s", "max s"],
                [
                    (
                        r["model"],
                        r["config"],
                        r["method"],
                        r["calib_images"],
                        r["seeds"],
                        round(r["seconds"], 1),
                        round(r["min_seconds"], 1),
                        round(r["max_seconds"], 1),
                    )
                    for r in rows
                ],
            )
        )
        return 0
    rows = [
        r
        for m in args.models
        for r in bench(m, args.methods, args.calib, args.w_bits, args.a_bits, args.whole_passes)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ["model", "method", "images", "seconds", "x ptq"]
    if args.whole_passes:
        header += ["whole passes s", "replay speed-up"]
    print(
        format_table(
            header,
            [
                (
                    r["model"],
                    r["method"],
                    r["calib_images"],
                    round(r["seconds"], 2),
                    round(r["x_ptq"], 1),
                )
                + (
                    (round(r["whole_passes_seconds"], 2), round(r["replay_speedup"], 2))
                    if args.whole_passes
                    else ()
                )
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
