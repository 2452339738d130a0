"""``eaq report``: regenerate a study's tables, plots and exports from its database."""

from __future__ import annotations

import argparse

from eaq.study import write_report


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md/report.html, plots and CSV/JSON from a study's database",
        description="Example: eaq report runs/study-resnet20",
    )
    p.add_argument("folder", help="a run folder written by `eaq study`")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = write_report(args.folder)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0
