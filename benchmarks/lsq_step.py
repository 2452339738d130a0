"""Forward + backward of QDrop's activation fake quantization, three ways, in the same run.

On an activation the size of one resnet18_cifar block input at reconstruction batch 32
(``[32, 64, 32, 32]``), a learnable per-tensor step size and QDrop's mask (p = 0.5):

- ``autograd``: the plain ops (divide, straight-through round, clamp, rescale, ``torch.where``
  with a boolean mask), as block reconstruction computed it before the fused node;
- ``torch-lsq``: PyTorch's own learnable fake quantize
  (``torch._fake_quantize_learnable_per_tensor_affine``) and the mask applied by multiplies;
- ``eaq``: :func:`eaq.methods.reconstruction.lsq_fake_quantize` (PyTorch's fused per-channel
  learnable fake quantize, the step size broadcast to it) with its float mask.

Prints milliseconds per step (median of ``--repeats``) and each one's ratio to ``autograd``.
Not a test.

    python benchmarks/lsq_step.py [--repeats 30] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from eaq.methods.reconstruction import keep_mask, lsq_fake_quantize
from eaq.table import format_table

SHAPE = (32, 64, 32, 32)
QMIN, QMAX = 0, 15


def _autograd(x, s, zp, keep_bool):
    t = x / s
    r = (t.round() - t).detach() + t
    q = torch.clamp(r + zp, QMIN, QMAX)
    return torch.where(keep_bool, x, (q - zp) * s)


def _torch_lsq(x, s, zp, keep):
    out = torch._fake_quantize_learnable_per_tensor_affine(x, s, zp, QMIN, QMAX, 1.0)
    return keep * x + (1 - keep) * out


def _eaq(x, s, zp, keep):
    return lsq_fake_quantize(x, s, zp, QMIN, QMAX, keep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g).relu_() * 2
    grad = torch.randn(SHAPE, generator=g)
    zp = torch.tensor([0.0])
    ways = {
        "autograd": lambda x, s, gen: _autograd(x, s, zp, torch.rand(SHAPE, generator=gen) < 0.5),
        "torch-lsq": lambda x, s, gen: _torch_lsq(x, s, zp, keep_mask(x, 0.5, gen)),
        "eaq": lambda x, s, gen: _eaq(x, s, zp, keep_mask(x, 0.5, gen)),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):  # interleaved, so that drift hits every way alike
        for name, fn in ways.items():
            x = x0.clone().requires_grad_(True)
            s = torch.tensor([0.3], requires_grad=True)
            gen = torch.Generator().manual_seed(1)
            t0 = time.perf_counter()
            fn(x, s, gen).backward(grad)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["autograd"])
    rows = [
        {"way": k, "ms": 1e3 * statistics.median(v), "ratio": statistics.median(v) / base}
        for k, v in times.items()
    ]
    if args.json:
        print(json.dumps({"shape": SHAPE, "threads": args.threads, "rows": rows}))
    else:
        table = [[r["way"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}"] for r in rows]
        print(format_table(["way", "ms per step", "vs autograd"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
