"""``eaq quantize``: FP32 and fake-quantized accuracy of one model under one plan."""

from __future__ import annotations

import argparse

import torch

from eaq.cli.common import (
    add_data_args,
    add_model_args,
    add_plan_args,
    check_positive,
    log,
    model_and_dataset,
    parse_method_options,
    plan_from_args,
    print_json,
)
from eaq.cli.export_cmd import (
    add_export_args,
    check_artifact_folder,
    check_export_args,
    export_and_check,
)
from eaq.data import calibration_batches, eval_batches, load_dataset
from eaq.deploy import ModelSpec, save_quantized
from eaq.errors import EaqError, choices_hint
from eaq.evaluate import channels_last_, evaluate
from eaq.methods import check_method_options, get_method
from eaq.methods.presets import PRESETS, model_family, preset_for
from eaq.models import create_model, weights_file
from eaq.nn import check_plan
from eaq.paths import resolve_data_root
from eaq.pipeline import onnx_accuracy, quantize_and_evaluate
from eaq.plan import LAYER_OPTIONS
from eaq.provenance import provenance, sha256
from eaq.table import format_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a model post-training and measure its accuracy",
        description=(
            "Evaluate a model in FP32, quantize it with a plan (uniform widths or --plan FILE), "
            "calibrate on images drawn from the training split, and evaluate it again. "
            "Example: eaq quantize --model resnet20_cifar --dataset cifar10 --w-bits 4 --a-bits 4"
        ),
    )
    add_model_args(p)
    add_data_args(p)
    add_plan_args(p)
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-size", type=int, default=256, help="calibration images (default 256)")
    g.add_argument("--method", default="ptq", help="PTQ method (see `eaq methods`; default ptq)")
    g.add_argument(
        "--method-option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the method, e.g. iters=500 (repeatable; `eaq methods` lists them)",
    )
    g.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="'best': eaq's best measured recipe for the model's family (ViT, depthwise CNN, "
        "CNN) and activation width: it sets the method, its options and the "
        "observers/attention quantizers, and prints them; the widths stay yours "
        "(docs/methods.md)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration subset (default 0)")
    d = p.add_argument_group("deployment")
    d.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="write the quantized model to DIR: packed integer codes, scales and the plan "
        "(safetensors + JSON); `eaq export DIR --onnx FILE` and `eaq evaluate --artifact DIR` "
        "read it",
    )
    d.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="also export the quantized model to an ONNX QDQ file and evaluate it on "
        "onnxruntime (both accuracies are reported)",
    )
    add_export_args(d)
    p.add_argument("--layers", action="store_true", help="also print the per-layer widths")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=run)


def _apply_preset(args: argparse.Namespace, model) -> tuple:
    """Set ``args``' method and quantizer settings from ``--preset``; the plan and method
    options they give. Settings the user also gave are an error, not silently replaced."""
    preset = preset_for(args.preset, model, args.a_bits)
    if args.plan is not None:
        raise EaqError("--preset sets the settings of a uniform plan; drop --plan or --preset")
    clash = [f"--method {args.method}"] if args.method != "ptq" else []
    clash += [f"--method-option {o}" for o in args.method_option or []]
    for opt in LAYER_OPTIONS:
        value = getattr(args, opt.name)
        if opt.name in preset.layer_options and value != opt.default:
            clash.append(f"{opt.flag} {value}")
    if clash:
        raise EaqError(
            f"--preset {args.preset} sets the method and quantizer settings itself; "
            f"drop {', '.join(clash)}"
        )
    for key, value in preset.layer_options.items():
        setattr(args, key, value)
    args.method = preset.method
    log(f"preset {args.preset} ({model_family(model)}, A{args.a_bits}): {preset.describe()}")
    return plan_from_args(args), check_method_options(preset.method, preset.method_options)


def run(args: argparse.Namespace) -> int:
    info, dataset = model_and_dataset(args)
    plan = plan_from_args(args)
    get_method(args.method)
    if args.preset is not None and args.preset not in PRESETS:
        raise EaqError(f"unknown preset {args.preset!r}; {choices_hint(list(PRESETS))}")
    method_options = parse_method_options(args.method, args.method_option)
    check_positive("--limit", args.limit)
    check_positive("--batch-size", args.batch_size)
    if args.calib_size < 1:
        raise EaqError(
            f"the calibration set is empty: --calib-size must be >= 1, got {args.calib_size}"
        )
    if args.save is not None:
        check_artifact_folder(args.save)
    if args.onnx is not None:
        check_export_args(args)
    root = resolve_data_root(args.data_root)
    torch.manual_seed(args.seed)

    model = create_model(
        args.model, num_classes=args.num_classes, weights=args.weights, data_root=root
    )
    if args.preset is not None:
        plan, method_options = _apply_preset(args, model)
    channels_last_(model)
    test = load_dataset(dataset, "test", root, download=args.download)
    train = load_dataset(dataset, "train", root, download=args.download)
    n_classes = getattr(test, "num_classes", None)
    n_out = args.num_classes or info.num_classes
    if n_classes is not None and n_classes != n_out:
        raise EaqError(
            f"model {args.model} has {n_out} classes but {dataset} has {n_classes}; "
            f"pass --num-classes {n_classes} with weights trained for it, or another --dataset"
        )
    check_plan(model, plan)  # fail before any evaluation
    norm = dict(mean=info.mean, std=info.std, input_size=info.input_size)
    batches = eval_batches(test, batch_size=args.batch_size, limit=args.limit, **norm)
    calib = calibration_batches(train, n=args.calib_size, seed=args.seed, **norm)

    fp32 = evaluate(model, batches, desc="fp32")
    log(f"FP32: top-1 {fp32.top1:.2f}%  top-5 {fp32.top5:.2f}%  ({fp32.n_images} images)")
    run_ = quantize_and_evaluate(
        model,
        plan,
        calib,
        batches,
        method=args.method,
        method_options=method_options,
        seed=args.seed,
    )
    model, summary, quant, calib_seconds = run_.model, run_.summary, run_.result, run_.calib_seconds
    log(f"{args.method}: quantized and calibrated in {calib_seconds:.1f} s")
    weights_path = weights_file(args.model, args.weights, root)

    result = {
        "model": args.model,
        "dataset": dataset,
        "fp32_top1": fp32.top1,
        "fp32_top5": fp32.top5,
        "quant_top1": quant.top1,
        "quant_top5": quant.top5,
        # rounded: 62.65 - 62.89 is -0.240000000000002 in floating point
        "delta_top1": round(quant.top1 - fp32.top1, 4),
        "w_bits": args.w_bits if args.plan is None else None,
        "a_bits": args.a_bits if args.plan is None else None,
        "granularity": args.granularity if args.plan is None else None,
        "observer": args.observer if args.plan is None else None,
        "plan": plan.to_dict(),
        "method": args.method,
        "method_options": method_options,
        "preset": args.preset,
        "calib_seconds": calib_seconds,
        "n_quantized_layers": summary.n_quantized,
        "n_layers": summary.n_layers,
        "quantized_kinds": summary.kind_counts(),
        "widths": summary.width_counts(),
        "n_images": quant.n_images,
        "calib_size": args.calib_size,
        "seconds_fp32": fp32.seconds,
        "seconds_quant": quant.seconds,
        "provenance": provenance(seed=args.seed, files={"weights": weights_path}),
    }
    spec = ModelSpec(
        name=args.model,
        num_classes=n_out,
        input_size=info.input_size,
        mean=info.mean,
        std=info.std,
        dataset=dataset,
        weights_sha256=None if weights_path is None else sha256(weights_path),
    )
    if args.save is not None:
        meta = save_quantized(
            model,
            args.save,
            spec=spec,
            plan=plan,
            method=args.method,
            method_options=method_options,
            extra={
                "accuracy": _accuracy(quant, fp32),
                "calibration": {"size": args.calib_size, "seed": args.seed, "split": "train"},
                "provenance": result["provenance"],
            },
        )
        result["artifact"] = {
            "folder": args.save,
            "bytes": meta["artifact_bytes"],
            "fp32_state_bytes": meta["fp32_state_bytes"],
            "size_ratio": meta["size_ratio"],
        }
        log(
            f"saved to {args.save}: {meta['artifact_bytes'] / 2**20:.2f} MiB, "
            f"{meta['size_ratio']:.3f}x the FP32 state dict "
            f"({meta['fp32_state_bytes'] / 2**20:.2f} MiB)"
        )
    if args.onnx is not None:
        report = export_and_check(model, args, spec, _accuracy(quant, fp32))
        shape = (3, info.input_size, info.input_size)
        result["onnx"] = {
            **report.to_dict(),
            **onnx_accuracy(model, batches, quant, shape, path=args.onnx),
        }
    if args.json:
        result["layers"] = [row.__dict__ for row in summary.layers]
        print_json(result)
        return 0
    print(
        f"{args.model} on {dataset} "
        f"({quant.n_images} test images, {args.calib_size} calibration images)"
    )
    print(
        format_table(
            ["config", "top-1 %", "top-5 %", "seconds"],
            [
                ("FP32", round(fp32.top1, 2), round(fp32.top5, 2), round(fp32.seconds, 1)),
                (_label(args), round(quant.top1, 2), round(quant.top5, 2), round(quant.seconds, 1)),
            ]
            + (
                [
                    (
                        "onnxruntime (QDQ)",
                        round(result["onnx"]["top1"], 2),
                        round(result["onnx"]["top5"], 2),
                        round(result["onnx"]["seconds"], 1),
                    )
                ]
                if "onnx" in result
                else []
            ),
        )
    )
    kinds = ", ".join(f"{n} {k}" for k, n in summary.kind_counts().items())
    widths = ", ".join(f"{n} x {w}" for w, n in summary.width_counts().items())
    print(f"quantized {summary.n_quantized}/{summary.n_layers} layers ({kinds}); widths: {widths}")
    if args.layers:
        print(
            format_table(
                ["layer", "kind", "w_bits", "a_bits", "granularity", "observer"],
                [
                    (r.name, r.kind, r.w_bits, r.a_bits, r.granularity, r.observer)
                    for r in summary.layers
                ],
            )
        )
    return 0


def _accuracy(quant, fp32) -> dict:
    return {
        "top1": quant.top1,
        "top5": quant.top5,
        "n_images": quant.n_images,
        "fp32_top1": fp32.top1,
        "fp32_top5": fp32.top5,
    }


def _label(args: argparse.Namespace) -> str:
    config = (
        f"plan {args.plan}" if args.plan else f"W{args.w_bits}A{args.a_bits} {args.granularity}"
    )
    return config if args.method == "ptq" else f"{config} {args.method}"
