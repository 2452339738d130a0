"""``eaq tables``: write the result tables of README.md and docs/ from stored rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eaq.errors import EaqError
from eaq.study.tables import check_documents, documents, import_rows, write_documents


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tables",
        help="rewrite the result tables in README.md and docs/ from stored rows (results/)",
        description=(
            "Every table between `<!-- eaq-table kind=... -->` and `<!-- /eaq-table -->` in "
            "README.md and docs/*.md is generated from a rows file in results/ (see "
            "eaq/study/tables.py for the kinds). Examples: `eaq tables --import "
            "runs/seed-cifar100` stores a finished study's rows as results/seed-cifar100.json "
            "and rewrites the tables; `eaq tables --check` exits 1 if a committed table differs "
            "from what the rows give."
        ),
    )
    p.add_argument(
        "--import",
        dest="import_dir",
        default=None,
        metavar="STUDY_DIR",
        help="first copy this study folder's rows to results/NAME.json (NAME: the folder's name)",
    )
    p.add_argument("--store", default=None, metavar="URL", help="with --import: a PostgreSQL store")
    p.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if any table is out of date"
    )
    p.add_argument(
        "--root",
        default=".",
        metavar="DIR",
        help="the project folder holding README.md, docs/ and results/ (default: here)",
    )
    p.add_argument("--json", action="store_true", help="print the documents as a JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if not (root / "README.md").is_file():
        raise EaqError(f"{root} has no README.md; pass the project folder as --root")
    if args.check and args.import_dir:
        raise EaqError("--check changes nothing; it cannot be combined with --import")
    if args.import_dir:
        folder = Path(args.import_dir)
        if args.store is None and not (folder / "study.sqlite").is_file():
            raise EaqError(f"{folder} is not a study folder (no study.sqlite)")
        dest = import_rows(
            folder, root / "results" / f"{folder.resolve().name}.json", store_url=args.store
        )
        print(f"wrote {dest.relative_to(root)}")
    docs = [str(p.relative_to(root)) for p in documents(root)]
    if args.check:
        stale = [str(p.relative_to(root)) for p in check_documents(root)]
        if args.json:
            print(json.dumps({"documents": docs, "stale": stale}))
        for p in stale:
            print(f"out of date: {p} (run `eaq tables`)")
        return 1 if stale else 0
    changed = [str(p.relative_to(root)) for p in write_documents(root)]
    if args.json:
        print(json.dumps({"documents": docs, "changed": changed}))
    else:
        print(f"{len(docs)} documents with tables; rewrote: {', '.join(changed) or 'none'}")
    return 0
