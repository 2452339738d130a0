"""Options and set-up shared by several commands (model, data, plan)."""

from __future__ import annotations

import argparse
import json
import sys

from eaq.data import dataset_names
from eaq.errors import EaqError, choices_hint
from eaq.models import ModelInfo, get_model_info
from eaq.plan import LAYER_OPTIONS, Plan, layer_config
from eaq.quant import MAX_BITS, MIN_BITS


def add_model_args(
    p: argparse.ArgumentParser, *, weights: bool = True, required: bool = True
) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, help="a registered model (see `eaq models`)")
    if weights:
        g.add_argument(
            "--weights",
            default="default",
            help=(
                "PATH to a state dict (.th/.pt/.safetensors), 'default' (the model's local "
                "default file, the default), 'pretrained' (timm/torchvision online weights) "
                "or 'random'"
            ),
        )
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", default=None, help="cifar10, cifar100 or imagenet (default: the model's)"
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="folder holding the data sets (default: $EAQ_DATA_ROOT, else ~/.cache/eaq/data)",
    )
    g.add_argument(
        "--download", action="store_true", help="download a missing CIFAR data set (online only)"
    )
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    g.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def add_layer_options(g) -> None:
    """The quantizer settings of :data:`eaq.plan.LAYER_OPTIONS` as options of a command."""
    for opt in LAYER_OPTIONS:
        default = opt.default
        # values are checked where the config is made, with eaq's one-line errors
        kwargs = dict(type=_bool, metavar="true|false") if isinstance(default, bool) else {}
        shown = str(default).lower() if isinstance(default, bool) else default
        valid = f": {', '.join(opt.valid())}" if opt.valid() is not None else ""
        g.add_argument(
            opt.flag,
            dest=opt.name,
            default=default,
            help=f"{opt.help}{valid} (default {shown})",
            **kwargs,
        )


def layer_options(args: argparse.Namespace) -> dict:
    """The :data:`eaq.plan.LAYER_OPTIONS` values a command was given, by name."""
    return {opt.name: getattr(args, opt.name) for opt in LAYER_OPTIONS}


def add_plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization plan (ignored with --plan)")
    g.add_argument("--w-bits", type=int, default=8, help="weight bits, 2..16 (default 8)")
    g.add_argument("--a-bits", type=int, default=8, help="activation bits, 2..16 (default 8)")
    add_layer_options(g)
    g.add_argument(
        "--quantize-first-last",
        action="store_true",
        help="quantize the first and last layer like the rest (default: keep them at 8 bits)",
    )
    g.add_argument(
        "--quantize-outputs",
        action="store_true",
        help="also quantize the outputs that no quantized layer reads next (residual branches "
        "before their add, convs before pooling), as integer kernels write them: what "
        "`eaq export` needs for integer convolutions everywhere",
    )
    g.add_argument("--plan", default=None, help="a JSON plan file (overrides the options above)")


def model_and_dataset(args: argparse.Namespace) -> tuple[ModelInfo, str]:
    """The model's registry entry and the data set to use (``--dataset`` or the model's)."""
    info = get_model_info(args.model)
    dataset = args.dataset or info.default_dataset
    if dataset not in dataset_names():
        raise EaqError(f"unknown dataset {dataset!r}; {choices_hint(dataset_names())}")
    return info, dataset


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The plan the options describe; validated before any model or data is loaded."""
    if args.plan is not None:
        return Plan.load(args.plan)
    for flag, bits in (("--w-bits", args.w_bits), ("--a-bits", args.a_bits)):
        if not MIN_BITS <= bits <= MAX_BITS:
            raise EaqError(f"{flag} must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return Plan(
        default=layer_config(args.w_bits, args.a_bits, **layer_options(args)),
        first_last_8bit=not args.quantize_first_last,
        quantize_outputs=args.quantize_outputs,
    )


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise EaqError(f"{name} must be >= 1, got {value}")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def log(msg: str) -> None:
    """Human-readable progress that must not pollute --json output on stdout."""
    print(msg, file=sys.stderr)


def parse_key_values(flag: str, items: list[str] | None, example: str) -> dict:
    """``FLAG KEY=VALUE`` items as a dict, the values read as YAML scalars (``0.5``, ``true``,
    ``rand-m9``)."""
    import yaml

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EaqError(f"{flag} {item!r} must look like KEY=VALUE, e.g. {example}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EaqError(f"{flag} {item!r}: cannot read the value {value!r}") from None
    return options


def parse_method_options(method: str, items: list[str] | None) -> dict:
    """``--method-option KEY=VALUE`` items as a dict, checked against the method's options."""
    from eaq.methods import check_method_options

    options = parse_key_values("--method-option", items, "iters=500")
    return check_method_options(method, options)
