"""``eaq sensitivity``: per-layer sensitivity to each candidate width, as a table and a plot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from eaq.cli.common import (
    add_layer_options,
    add_model_args,
    check_positive,
    layer_options,
    log,
    model_and_dataset,
    print_json,
)
from eaq.data import calibration_batches, load_dataset
from eaq.errors import EaqError
from eaq.mixed import MEASURES, candidate_grid, layer_sensitivity
from eaq.models import create_model
from eaq.paths import resolve_data_root
from eaq.plan import layer_config
from eaq.table import format_table


def _widths(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EaqError(f"{flag} must be a comma-separated list of bits, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="per-layer quantization sensitivity (the seed's S_l, or end-to-end KL)",
        description=(
            "Measure each layer's sensitivity to each candidate width on calibration images. "
            "Example: eaq sensitivity --model resnet20_cifar --widths 4,6,8"
        ),
    )
    add_model_args(p)
    p.add_argument("--dataset", default=None, help="data set (default: the model's)")
    p.add_argument("--data-root", default=None, help="data folder (default $EAQ_DATA_ROOT)")
    p.add_argument("--calib-size", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed (default 0)")
    p.add_argument("--widths", default="4,6,8", help="candidate bits (default 4,6,8)")
    p.add_argument(
        "--a-widths", default=None, help="activation bits; all (w, a) pairs (default: a = w)"
    )
    add_layer_options(p.add_argument_group("quantizer settings of the candidates"))
    p.add_argument(
        "--measure",
        default="l2",
        choices=MEASURES,
        help="l2 (the seed's layer output error, default), kl (end-to-end logits) or nuclear "
        "(l2 squared x output nuclear norm, Liu et al. 2021)",
    )
    p.add_argument("--plot", default=None, help="save the plot here (PNG; an SVG beside it)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info, dataset = model_and_dataset(args)
    check_positive("--calib-size", args.calib_size)
    cands = candidate_grid(_widths(args.widths, "--widths"), _widths(args.a_widths, "--a-widths"))
    base = layer_config(8, 8, **layer_options(args))
    root = resolve_data_root(args.data_root)
    torch.manual_seed(args.seed)
    model = create_model(
        args.model, num_classes=args.num_classes, weights=args.weights, data_root=root
    )
    train = load_dataset(dataset, "train", root)
    calib = calibration_batches(
        train,
        n=args.calib_size,
        seed=args.seed,
        mean=info.mean,
        std=info.std,
        input_size=info.input_size,
    )
    t0 = time.perf_counter()
    sens = layer_sensitivity(model, calib, cands, base=base, measure=args.measure, progress=True)
    log(
        f"sensitivity of {len(sens.names)} layers x {len(cands)} widths in "
        f"{time.perf_counter() - t0:.1f} s on {sens.n_images} images"
    )
    if args.plot:
        from eaq.study.report import sensitivity_plot

        plot = Path(args.plot)
        plot.parent.mkdir(parents=True, exist_ok=True)
        sensitivity_plot(sens.to_rows(), args.model, plot.parent, stem=plot.with_suffix("").name)
        log(f"plot: {plot.with_suffix('.png')} and .svg")
    if args.json:
        print_json(sens.to_rows())
        return 0
    print(
        format_table(
            ["layer", "kind"] + [f"W{w}A{a}" for w, a in cands],
            [
                (name, kind, *[float(v) for v in sens.values[i]])
                for i, (name, kind) in enumerate(zip(sens.names, sens.kinds, strict=True))
            ],
        )
    )
    return 0
