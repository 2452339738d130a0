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
    p.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="read the rows from this PostgreSQL store (postgresql://USER@HOST:PORT/DB) instead "
        "of the folder's SQLite file",
    )
    p.add_argument(
        "--published",
        default=None,
        metavar="FILE",
        help="a published-results file (e.g. studies/published/seed.yaml) to set beside the "
        "measured rows, table by table",
    )
    p.add_argument(
        "--peers",
        default=None,
        metavar="FILE",
        help="other toolkits' rows (peers/run.py's rows.jsonl or results/peers.json) to draw "
        "on the Pareto plots and table beside the study's rows",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = write_report(
        args.folder, store_url=args.store, published=args.published, peers=args.peers
    )
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0
