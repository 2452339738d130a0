"""The cost of layer sensitivities against one evaluation pass over the calibration set.

For each model: the time of one float forward pass over the calibration batches, the time of
:func:`eaq.mixed.layer_sensitivity` (``l2``, all layers x all candidate widths) on the same
batches, and their ratio, in forward-pass equivalents (target: about 3 or less for W=A widths
{4, 6, 8}). Random weights and images: the cost does not depend on them. Each time is the
fastest of ``--repeat`` runs, the two measured in turn, so that a busy machine slows both alike.
Not a test.

    python benchmarks/sensitivity_cost.py [--models M ...] [--calib 256] [--widths 4,6,8]
        [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from eaq.mixed import candidate_grid, layer_sensitivity
from eaq.models import create_model, get_model_info
from eaq.table import format_table


def bench(name: str, n: int, batch: int, widths: list[int], repeat: int = 3) -> dict:
    torch.manual_seed(0)
    info = get_model_info(name)
    model = create_model(name, weights="random")
    s = info.input_size
    calib = [
        (torch.randn(min(batch, n - i), 3, s, s), torch.zeros(min(batch, n - i), dtype=torch.long))
        for i in range(0, n, batch)
    ]
    cands = candidate_grid(widths)
    with torch.inference_mode():
        model(calib[0][0])  # warm-up
    one_pass = seconds = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in calib:
                model(x)
        one_pass = min(one_pass, time.perf_counter() - start)
        start = time.perf_counter()
        sens = layer_sensitivity(model, calib, cands)
        seconds = min(seconds, time.perf_counter() - start)
    return {
        "model": name,
        "layers": len(sens.names),
        "candidates": len(cands),
        "calib_images": n,
        "forward_pass_s": one_pass,
        "sensitivity_s": seconds,
        "passes": seconds / one_pass,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["resnet20_cifar", "resnet18_cifar", "deit_tiny_cifar"]
    )
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--widths", default="4,6,8")
    p.add_argument("--repeat", type=int, default=3, help="runs per timing (the fastest counts)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    rows = [bench(m, args.calib, args.batch, widths, args.repeat) for m in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        format_table(
            ["model", "layers", "widths", "images", "1 pass s", "sensitivity s", "passes"],
            [
                (
                    r["model"],
                    r["layers"],
                    r["candidates"],
                    r["calib_images"],
                    round(r["forward_pass_s"], 2),
                    round(r["sensitivity_s"], 2),
                    round(r["passes"], 2),
                )
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
