"""``eaq export``: a saved quantized model to an ONNX QDQ file with eaq's own parameters."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

from eaq.cli.common import log, print_json
from eaq.deploy import (
    DEFAULT_OPSET,
    ExportReport,
    ModelSpec,
    export_onnx,
    load_quantized,
    model_spec,
    read_metadata,
    require_onnx,
    require_onnxruntime,
)
from eaq.deploy.onnx_export import MAX_OPSET, MIN_OPSET
from eaq.errors import EaqError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a saved quantized model to ONNX (QuantizeLinear/DequantizeLinear)",
        description=(
            "Export a quantized model saved by `eaq quantize --save DIR` to an ONNX file in "
            "the QDQ format, with eaq's own scales, zero points and integer codes (nothing is "
            "calibrated again). onnxruntime runs it on integer kernels: `eaq evaluate --onnx "
            "FILE`. Weights of 4 bits or fewer are INT4 (opset 21), or int8 codes with --opset "
            "13..20; "
            "BatchNorms after a conv are folded into its per-channel scales. Log2/twin "
            "quantizers have no QDQ form: they are an error unless --float-nonuniform."
        ),
    )
    p.add_argument("artifact", metavar="DIR", help="a folder written by `eaq quantize --save`")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    add_export_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=run)


def add_export_args(p) -> None:
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: 21 when weights of 4 bits or "
        "fewer need INT4, else 20)",
    )
    p.add_argument(
        "--float-nonuniform",
        action="store_true",
        help="keep the inputs of log2/twin quantizers in float instead of failing",
    )


def check_artifact_folder(folder: str) -> None:
    """Fail before any work when ``--save DIR`` would overwrite something else."""
    path = Path(folder)
    if path.exists() and not (path / "artifact.json").is_file():
        if not path.is_dir() or any(path.iterdir()):
            raise EaqError(f"--save {folder} exists and is not an eaq artifact; choose another")


def check_export_args(args: argparse.Namespace) -> None:
    """Fail before any work: the runtimes, the opset and the output file's folder."""
    require_onnx()
    require_onnxruntime()
    if args.opset is not None and not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise EaqError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {args.opset}")
    out = Path(args.onnx)
    if out.suffix != ".onnx":
        raise EaqError(f"--onnx {args.onnx} must name a .onnx file")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise EaqError(f"cannot write {args.onnx}: {parent} is not writable")


def export_and_check(model, args: argparse.Namespace, spec: ModelSpec, accuracy: dict | None):
    """Export ``model`` to ``args.onnx`` with the model's facts as metadata; log the report."""
    facts = {"model": asdict(spec), "eaq_accuracy": accuracy}
    report = export_onnx(
        model,
        args.onnx,
        input_shape=(3, spec.input_size, spec.input_size),
        opset=args.opset,
        float_nonuniform=args.float_nonuniform,
        metadata=facts,
    )
    log(describe(report))
    return report


def describe(report: ExportReport) -> str:
    """One paragraph on what an export wrote and chose."""
    n = report.narrow_weights
    if n == 0:
        int4 = "no weights of 4 bits or fewer"
    elif report.int4 == n:
        int4 = f"{n} weights of 4 bits or fewer as INT4"
    elif report.int4:
        int4 = (
            f"{report.int4} of {n} weights of 4 bits or fewer as INT4, the rest as int8 codes "
            "(a negative BatchNorm scale took a code outside the 4-bit range)"
        )
    else:
        int4 = (
            f"{n} weights of 4 bits or fewer as int8 codes within their range "
            f"(INT4 needs opset 21, this is {report.opset})"
        )
    lines = [
        f"wrote {report.path} ({report.size_bytes / 2**20:.2f} MiB, opset {report.opset}): "
        f"{report.layers} quantized layers, {int4}, "
        f"{len(report.folded_batchnorm)} BatchNorms folded into conv scales"
    ]
    if report.float_layers:
        lines.append(
            f"kept in float (--float-nonuniform): inputs of {', '.join(report.float_layers)}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_export_args(args)
    meta = read_metadata(args.artifact)
    spec = model_spec(meta)
    model, _ = load_quantized(args.artifact)
    report = export_and_check(model, args, spec, meta.get("accuracy"))
    if args.json:
        print_json({"artifact": args.artifact, **report.to_dict()})
    return 0
