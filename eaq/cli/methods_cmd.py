"""``eaq methods``: the PTQ methods, one line each."""

from __future__ import annotations

import argparse

from eaq.cli.common import print_json
from eaq.methods import list_methods
from eaq.table import format_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the post-training quantization methods",
        description="List the PTQ methods that --method accepts, one line each.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = list_methods()
    if args.json:
        print_json([{"name": m.name, "summary": m.summary, "options": m.options} for m in methods])
    else:
        rows = [(m.name, m.summary, _options(m.options)) for m in methods]
        print(format_table(["method", "what it does", "options (default)"], rows))
    return 0


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
