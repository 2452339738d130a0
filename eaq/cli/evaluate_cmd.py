"""``eaq evaluate``: top-1/top-5 of a checkpoint, a saved quantized model or an ONNX file."""

from __future__ import annotations

import argparse

from eaq.cli.common import (
    add_data_args,
    add_model_args,
    check_positive,
    model_and_dataset,
    print_json,
)
from eaq.data import dataset_names, eval_batches, load_dataset
from eaq.errors import EaqError, choices_hint
from eaq.evaluate import channels_last_, evaluate
from eaq.models import create_model
from eaq.paths import resolve_data_root
from eaq.provenance import provenance, sha256


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy of a model's weights, a saved quantized model or an ONNX file",
        description=(
            "Top-1/top-5 accuracy on the test split of a data set: of a registered model in "
            "FP32 (--model), of a quantized model saved by `eaq quantize --save` (--artifact "
            "DIR, run in eaq), or of an ONNX file on onnxruntime's CPU provider (--onnx FILE; "
            "a file `eaq export` wrote knows its data set and input normalisation)."
        ),
    )
    add_model_args(p, required=False)
    p.add_argument("--artifact", default=None, metavar="DIR", help="a saved quantized model")
    p.add_argument("--onnx", default=None, metavar="FILE", help="an ONNX file (onnxruntime, CPU)")
    p.add_argument(
        "--threads", type=int, default=None, help="onnxruntime threads (default: all cores)"
    )
    add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=run)


def _source(args: argparse.Namespace):
    """``(kind, model spec facts)`` from --model, --artifact or --onnx (exactly one)."""
    given = [f for f in ("model", "artifact", "onnx") if getattr(args, f)]
    if len(given) != 1:
        raise EaqError(
            "pass exactly one of --model NAME, --artifact DIR or --onnx FILE"
            + (f" (got {', '.join('--' + g for g in given)})" if given else "")
        )
    return given[0]


def run(args: argparse.Namespace) -> int:
    kind = _source(args)
    check_positive("--limit", args.limit)
    check_positive("--batch-size", args.batch_size)
    check_positive("--threads", args.threads)
    root = resolve_data_root(args.data_root)
    files = {}
    if kind == "model":
        info, dataset = model_and_dataset(args)
        name, mean, std, size = args.model, info.mean, info.std, info.input_size
        model = channels_last_(
            create_model(
                args.model, num_classes=args.num_classes, weights=args.weights, data_root=root
            )
        )
    elif kind == "artifact":
        from eaq.deploy import load_quantized, model_spec, read_metadata

        spec = model_spec(read_metadata(args.artifact))
        dataset = _dataset(args.dataset or spec.dataset, args.artifact)
        name, mean, std, size = spec.name, spec.mean, spec.std, spec.input_size
        model, _ = load_quantized(args.artifact)
        channels_last_(model)  # as `eaq quantize` evaluated it: the same kernels, the same logits
    else:
        from eaq.deploy import OnnxModel, read_model_metadata

        facts = read_model_metadata(args.onnx).get("model", {})
        dataset = _dataset(args.dataset or facts.get("dataset"), args.onnx)
        if not facts:
            raise EaqError(
                f"{args.onnx} has no eaq metadata (model, input normalisation); "
                "export it with `eaq export` or `eaq quantize --onnx`"
            )
        name, mean, std, size = facts["name"], facts["mean"], facts["std"], facts["input_size"]
        model = OnnxModel(args.onnx, threads=args.threads)
        files["onnx"] = args.onnx
    test = load_dataset(dataset, "test", root, download=args.download)
    batches = eval_batches(
        test, mean=mean, std=std, input_size=size, batch_size=args.batch_size, limit=args.limit
    )
    if batches.n_images == 0:
        raise EaqError(f"the {dataset} test split holds no images to evaluate")
    result = evaluate(model, batches, desc=name)
    if args.json:
        record = {
            "model": name,
            "source": kind,
            "dataset": dataset,
            "top1": result.top1,
            "top5": result.top5,
            "n_images": result.n_images,
            "seconds": result.seconds,
            "provenance": provenance(files=files),
        }
        if kind == "onnx":
            record["onnx_sha256"] = sha256(args.onnx)
        print_json(record)
    else:
        via = {"model": "", "artifact": " (saved quantized model)", "onnx": " (onnxruntime)"}
        print(
            f"{name}{via[kind]} on {dataset}: top-1 {result.top1:.2f}%  "
            f"top-5 {result.top5:.2f}%  ({result.n_images} images, {result.seconds:.1f} s)"
        )
    return 0


def _dataset(name: str | None, source: str) -> str:
    if name is None:
        raise EaqError(f"{source} does not say which data set it was made for; pass --dataset")
    if name not in dataset_names():
        raise EaqError(f"unknown dataset {name!r}; {choices_hint(dataset_names())}")
    return name
