"""``eaq study``: run (or resume) a study from a YAML file into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eaq.cli.common import check_positive, log, print_json
from eaq.errors import EaqError
from eaq.paths import resolve_data_root
from eaq.study import Store, load_study, run_study, summarize
from eaq.study.executors import InProcessExecutor, RayExecutor
from eaq.study.store import is_database_url
from eaq.table import format_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run a quantization study (FP32, uniform, percentile and budgeted mixed precision)",
        description=(
            "Run every model x configuration x seed of a study file, one database row each, "
            "into a run folder; then `eaq report DIR` makes the tables and plots. "
            "Example: eaq study studies/resnet20_cifar10.yaml --out runs/study-resnet20"
        ),
    )
    p.add_argument("config", help="study YAML file (see studies/)")
    p.add_argument("--out", default=None, help="run folder (default runs/<study name>)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted study in --out")
    p.add_argument(
        "--from-rows",
        default=None,
        metavar="FILE",
        help="start from the rows of this rows file of the same study (results/NAME.json, "
        "written by `eaq tables --import`): only the rows missing from it are measured",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="calibration seeds instead of the study file's (e.g. --seeds 0 1 2); another set "
        "of seeds is another study: give it its own --out",
    )
    p.add_argument("--data-root", default=None, help="data folder (default $EAQ_DATA_ROOT)")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    x = p.add_argument_group("execution")
    x.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="keep the rows in this PostgreSQL database (postgresql://USER@HOST:PORT/DB) "
        "instead of the run folder's SQLite file; same resume and fingerprint rules",
    )
    x.add_argument(
        "--executor",
        choices=("in-process", "ray"),
        default="in-process",
        help="who measures the rows: this process (default) or Ray tasks, one per row",
    )
    x.add_argument(
        "--address",
        default=None,
        help="with --executor ray: a running cluster's address (default: start a local Ray)",
    )
    x.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --executor ray and no --address: CPUs of the local Ray (default: all)",
    )
    x.add_argument(
        "--cpus-per-task", type=int, default=1, help="with --executor ray: CPUs per row (1)"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal; then a line "
        "per finished row is printed instead)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_positive("--limit", args.limit)
    check_positive("--workers", args.workers)
    check_positive("--cpus-per-task", args.cpus_per_task)
    if args.store is not None and not is_database_url(args.store):
        raise EaqError(f"--store {args.store!r} must be a postgresql://USER@HOST:PORT/DB URL")
    if args.executor != "ray" and (args.address or args.workers):
        raise EaqError("--address and --workers go with --executor ray")
    cfg = load_study(args.config).with_limit(args.limit).with_seeds(args.seeds)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    bars = not args.no_progress and sys.stderr.isatty()
    root = resolve_data_root(args.data_root)
    executor = InProcessExecutor()
    if args.executor == "ray":
        executor = RayExecutor(
            root, address=args.address, num_cpus=args.workers, cpus_per_task=args.cpus_per_task
        )
    try:
        summary = run_study(
            cfg,
            out,
            resume=args.resume,
            data_root=root,
            progress=bars,
            say=None if bars else log,
            executor=executor,
            store_url=args.store,
            from_rows=args.from_rows,
        )
    finally:
        executor.close()
    log(
        f"study {cfg.name}: {summary.written} rows written, {summary.skipped} already done, "
        f"{summary.seconds:.0f} s; database {args.store or out / 'study.sqlite'}"
    )
    with Store.open(out, url=args.store) as store:
        rows = summarize(store.results())
    if args.json:
        print_json(rows)
        return 0
    print(
        format_table(
            ["model", "config", "method", "rel. energy", "top-1 mean", "top-1 std", "Δ top-1"]
            + ["calib. s", "seeds"],
            [
                (
                    r["model"],
                    r["config"],
                    r["method"],
                    round(r["relative_energy"], 4),
                    round(r["top1_mean"], 2),
                    round(r["top1_std"], 2),
                    None if r["delta_top1"] is None else round(r["delta_top1"], 2),
                    round(r["calib_seconds_mean"], 1),
                    r["n_seeds"],
                )
                for r in rows
            ],
        )
    )
    return 0
