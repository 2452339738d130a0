"""Deployment cost: FP32 eager PyTorch, FP32 onnxruntime and integer (QDQ) onnxruntime.

For each model, in one run on this CPU: throughput at batch 64 and latency at batch 1 of the
FP32 model in eager PyTorch (the baseline), the same model exported to ONNX on onnxruntime, and
eaq's quantized model (default weights, plain PTQ, 256 calibration images from the training
split, quantized outputs so that every convolution can run on integer kernels) exported as QDQ
on onnxruntime. Each is printed as a ratio to FP32 eager, next to the
energy model's relative energy of the same plan and the sizes on disk (FP32 state dict as
float32 safetensors, the eaq artifact, the ONNX files). Where Linux exposes an energy counter
(powercap/RAPL) it is read around each throughput run and joules per image are printed; where
none is readable the table says so. Not a test: run it with `make bench-deploy`.

    python benchmarks/deployment.py [--models M ...] [--w-bits 8] [--a-bits 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from eaq.data import calibration_batches, load_dataset
from eaq.deploy import ModelSpec, OnnxModel, export_onnx, save_quantized
from eaq.energy import collect_stats, plan_energy
from eaq.methods import quantize_model_
from eaq.models import create_model, get_model_info
from eaq.paths import resolve_data_root
from eaq.plan import Plan
from eaq.table import format_table

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def read_energy_uj() -> int | None:
    """The package energy counter in microjoules, or None where none is readable."""
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


def timed(fn, x: torch.Tensor, *, repeats: int, min_seconds: float = 1.0) -> tuple[float, float]:
    """Median seconds per call of ``fn(x)`` over ``repeats`` timed rounds, and joules per call.

    A round runs ``fn`` until ``min_seconds`` have passed; joules are None without a counter.
    """
    fn(x)  # warm-up
    per_call, joules = [], []
    for _ in range(repeats):
        e0, n, t0 = read_energy_uj(), 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            took = time.perf_counter() - t0
            if took >= min_seconds:
                break
        e1 = read_energy_uj()
        per_call.append(took / n)
        if e0 is not None and e1 is not None and e1 >= e0:
            joules.append((e1 - e0) * 1e-6 / n)
    return statistics.median(per_call), (statistics.median(joules) if joules else None)


def bench(name: str, plan: Plan, root: Path, work: Path, repeats: int) -> list[dict]:
    from safetensors.torch import save_file

    info = get_model_info(name)
    size = info.input_size
    model = create_model(name, weights="default", data_root=root)
    fp32_file = work / f"{name}_fp32.safetensors"
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, fp32_file)
    fp32_onnx = work / f"{name}_fp32.onnx"
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(fp32_onnx),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    stats = collect_stats(model, size)
    train = load_dataset(info.default_dataset, "train", root)
    calib = calibration_batches(train, n=256, seed=0, mean=info.mean, std=info.std, input_size=size)
    quant = create_model(name, weights="default", data_root=root)
    quantize_model_(quant, plan, calib, "ptq")
    spec = ModelSpec(name, info.num_classes, size, info.mean, info.std, info.default_dataset)
    meta = save_quantized(quant, work / f"{name}_artifact", spec=spec, plan=plan)
    q_onnx = work / f"{name}_qdq.onnx"
    report = export_onnx(quant, q_onnx, input_shape=(3, size, size))
    relative_energy = plan_energy(stats, plan, "horowitz45nm").relative_energy

    runners = {
        "FP32 eager": (model, None, fp32_file.stat().st_size),
        "FP32 onnxruntime": (OnnxModel(fp32_onnx), None, fp32_onnx.stat().st_size),
        "int onnxruntime": (OnnxModel(q_onnx), relative_energy, report.size_bytes),
    }
    torch.manual_seed(0)
    big, one = torch.randn(64, 3, size, size), torch.randn(1, 3, size, size)
    rows = []
    with torch.inference_mode():
        for label, (run, energy_rel, disk) in runners.items():
            sec64, j64 = timed(run, big, repeats=repeats)
            sec1, _ = timed(run, one, repeats=repeats)
            rows.append(
                {
                    "model": name,
                    "runtime": label,
                    "img_s_batch64": 64 / sec64,
                    "latency_ms_batch1": 1000 * sec1,
                    "joules_per_image": None if j64 is None else j64 / 64,
                    "disk_bytes": disk,
                    "relative_energy_model": 1.0 if energy_rel is None else energy_rel,
                }
            )
    base = rows[0]
    for r in rows:
        r["throughput_ratio"] = r["img_s_batch64"] / base["img_s_batch64"]
        r["latency_ratio"] = r["latency_ms_batch1"] / base["latency_ms_batch1"]
        r["size_ratio"] = r["disk_bytes"] / base["disk_bytes"]
    rows[-1]["artifact_bytes"] = meta["artifact_bytes"]
    rows[-1]["artifact_size_ratio"] = meta["artifact_bytes"] / fp32_file.stat().st_size
    w4 = create_model(name, weights="default", data_root=root)  # the size of a 4-bit artifact
    plan4 = Plan.uniform(4, 4)
    quantize_model_(w4, plan4, calib, "ptq")
    meta4 = save_quantized(w4, work / f"{name}_w4a4", spec=spec, plan=plan4)
    rows[-1]["w4a4_artifact_bytes"] = meta4["artifact_bytes"]
    rows[-1]["w4a4_artifact_size_ratio"] = meta4["artifact_bytes"] / fp32_file.stat().st_size
    return rows


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["resnet18_cifar", "deit_tiny_cifar", "resnet20_cifar"]
    )
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--a-bits", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of >= 1 s each")
    p.add_argument(
        "--no-quantize-outputs",
        action="store_true",
        help="export the plan without quantized outputs (residual branches stay float)",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = resolve_data_root(args.data_root)
    plan = Plan.uniform(args.w_bits, args.a_bits, quantize_outputs=not args.no_quantize_outputs)
    counter = read_energy_uj() is not None
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in args.models:
            print(f"measuring {name} ...", file=sys.stderr)
            rows += bench(name, plan, root, Path(tmp), args.repeats)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    print(
        f"W{args.w_bits}A{args.a_bits} (first/last 8-bit, per-channel weights, "
        f"quantize_outputs {plan.quantize_outputs}), "
        f"{torch.get_num_threads()} threads; ratios are to FP32 eager in this run"
    )
    print(
        format_table(
            [
                "model",
                "runtime",
                "img/s b64",
                "x eager",
                "ms b1",
                "x eager",
                "disk MiB",
                "x FP32",
                "energy model",
                "J/img",
            ],
            [
                (
                    r["model"],
                    r["runtime"],
                    round(r["img_s_batch64"], 1),
                    round(r["throughput_ratio"], 2),
                    round(r["latency_ms_batch1"], 2),
                    round(r["latency_ratio"], 2),
                    round(r["disk_bytes"] / 2**20, 2),
                    round(r["size_ratio"], 3),
                    round(r["relative_energy_model"], 3),
                    "-" if r["joules_per_image"] is None else round(r["joules_per_image"], 4),
                )
                for r in rows
            ],
        )
    )
    for r in rows:
        if "artifact_bytes" in r:
            print(
                f"{r['model']}: eaq artifact {r['artifact_bytes'] / 2**20:.2f} MiB, "
                f"{r['artifact_size_ratio']:.3f}x the FP32 state dict; at W4A4 "
                f"{r['w4a4_artifact_bytes'] / 2**20:.2f} MiB, "
                f"{r['w4a4_artifact_size_ratio']:.3f}x"
            )
    if not counter:
        print(f"no energy counter readable here ({RAPL}): joules per image not measured")


if __name__ == "__main__":
    main()
