"""Evaluation throughput, FP32 against fake-quantized W8A8, on random weights and images.

Prints images/s for each model and the ratio quantized / FP32 (target: >= 0.7), both measured
in the same run on the same inputs. Not a test: run it with `make bench`.

    python benchmarks/throughput.py [--models M ...] [--batch 128] [--iters 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from eaq.models import create_model, get_model_info
from eaq.nn import calibrate_, quantize_
from eaq.plan import Plan
from eaq.table import format_table


def images_per_second(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        return iters * x.shape[0] / (time.perf_counter() - start)


def bench(name: str, batch: int, iters: int, w_bits: int, a_bits: int) -> dict:
    torch.manual_seed(0)
    info = get_model_info(name)
    model = create_model(name, weights="random")
    x = torch.randn(batch, 3, info.input_size, info.input_size)
    fp32 = images_per_second(model, x, iters)
    summary = quantize_(model, Plan.uniform(w_bits, a_bits))
    calibrate_(model, [(x[:32], None)])
    quant = images_per_second(model, x, iters)
    return {
        "model": name,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "quantized_layers": summary.n_quantized,
        "fp32_img_s": fp32,
        "quant_img_s": quant,
        "ratio": quant / fp32,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18_cifar", "deit_tiny_cifar"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--a-bits", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [bench(m, args.batch, args.iters, args.w_bits, args.a_bits) for m in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"evaluation throughput, W{args.w_bits}A{args.a_bits} fake quantization vs FP32, CPU")
    print(
        format_table(
            ["model", "batch", "threads", "layers", "FP32 img/s", "quant img/s", "ratio"],
            [
                (
                    r["model"],
                    r["batch"],
                    r["threads"],
                    r["quantized_layers"],
                    round(r["fp32_img_s"], 1),
                    round(r["quant_img_s"], 1),
                    round(r["ratio"], 3),
                )
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
