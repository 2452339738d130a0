"""``eaq evaluate``: FP32 top-1/top-5 of a checkpoint."""

from __future__ import annotations

import argparse

from eaq.cli.common import (
    add_data_args,
    add_model_args,
    check_positive,
    model_and_dataset,
    print_json,
)
from eaq.data import eval_batches, load_dataset
from eaq.evaluate import evaluate
from eaq.models import create_model
from eaq.paths import resolve_data_root
from eaq.provenance import provenance


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FP32 accuracy of a model's weights on a test set",
        description="Top-1/top-5 accuracy of a model (FP32) on the test split of a data set.",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info, dataset = model_and_dataset(args)
    check_positive("--limit", args.limit)
    check_positive("--batch-size", args.batch_size)
    root = resolve_data_root(args.data_root)
    model = create_model(
        args.model, num_classes=args.num_classes, weights=args.weights, data_root=root
    )
    test = load_dataset(dataset, "test", root, download=args.download)
    batches = eval_batches(
        test,
        mean=info.mean,
        std=info.std,
        input_size=info.input_size,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    result = evaluate(model, batches, desc=args.model)
    if args.json:
        print_json(
            {
                "model": args.model,
                "dataset": dataset,
                "top1": result.top1,
                "top5": result.top5,
                "n_images": result.n_images,
                "seconds": result.seconds,
                "provenance": provenance(),
            }
        )
    else:
        print(
            f"{args.model} on {dataset}: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  "
            f"({result.n_images} images, {result.seconds:.1f} s)"
        )
    return 0
