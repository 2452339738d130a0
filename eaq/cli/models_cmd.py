"""``eaq models``: the model registry."""

from __future__ import annotations

import argparse
import json

from eaq.models import list_models
from eaq.table import format_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models",
        description="List the registered models with their default data set, size and weights.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    infos = list_models()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    rows = [
        (
            i.name,
            i.family,
            i.default_dataset,
            i.num_classes,
            i.input_size,
            i.default_weights,
            i.description,
        )
        for i in infos
    ]
    print(
        format_table(
            ["model", "family", "dataset", "classes", "size", "default weights", "description"],
            rows,
        )
    )
    return 0
