"""Where a finished study's time went: its wall time over the sum of its evaluations' time.

Reads a study folder (default: runs/seed-cifar100, what `make run` writes) and prints, from what
the study stored while it ran: the wall time of every `eaq study` invocation that wrote to it
(resumed runs included; a killed one's up to its last stored row), the time of each row's
test-set evaluation, of its quantization and calibration (per method), and of the work outside
rows (building models, FP32 statistics, sensitivities and plan scoring). The overhead is
wall / sum(evaluation seconds); the second ratio also counts the calibration of the
reconstruction methods (QDrop, ranking-aware, ...) as work, since their search is the method
itself. Not a test: `make bench-overhead`.

    python benchmarks/study_overhead.py [runs/seed-cifar100] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from eaq.errors import EaqError
from eaq.study import Store


def measure(folder: Path) -> dict:
    with Store.open_folder(folder) as store:
        rows = store.results()
        sessions = store.sessions()
    if not sessions:
        raise EaqError(f"{folder}: no recorded `eaq study` sessions (a study run by an older eaq?)")
    wall = sum(s["seconds"] for s in sessions)
    per_model: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    calib_by_method: dict[str, float] = defaultdict(float)
    for r in rows:
        m = per_model[r["model"]]
        m["rows"] += 1
        m["eval_seconds"] += r["provenance"]["eval_seconds"]
        m["images"] += r["n_images"] if r["provenance"]["eval_seconds"] else 0
        # a row finished from a shared calibration pass counts that pass's time in its
        # calib_seconds (its cost on its own) without spending it again: count the time spent
        spent = r["calib_seconds"] - r["provenance"].get("shared_pass_seconds", 0.0)
        m["calib_seconds"] += spent
        m["row_seconds"] += r["seconds"]
        calib_by_method[r["method"]] += spent
    evals = sum(m["eval_seconds"] for m in per_model.values())
    row_time = sum(m["row_seconds"] for m in per_model.values())
    methods = sum(v for k, v in calib_by_method.items() if k not in ("ptq", "none"))
    phases: dict[str, float] = defaultdict(float)
    for s in sessions:
        for k, v in (s.get("phases") or {}).items():
            phases[k] += v
    return {
        "folder": str(folder),
        "sessions": len(sessions),
        "rows": len(rows),
        "wall_seconds": wall,
        "eval_seconds": evals,
        "row_seconds": row_time,
        "outside_rows_seconds": wall - row_time,
        "phases": dict(phases),
        "calib_seconds_by_method": dict(calib_by_method),
        "per_model": {k: dict(v) for k, v in per_model.items()},
        "overhead": wall / evals,
        "overhead_methods_as_work": wall / (evals + methods),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="runs/seed-cifar100", help="a study folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    try:
        got = measure(Path(args.folder))
    except EaqError as e:
        print(f"study_overhead: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(got, indent=1))
        return 0
    print(f"{got['folder']}: {got['rows']} rows in {got['sessions']} session(s)")
    print(f"wall time                      {got['wall_seconds']:8.1f} s")
    print(f"test-set evaluations           {got['eval_seconds']:8.1f} s")
    for method, s in sorted(got["calib_seconds_by_method"].items()):
        print(f"calibration, method {method:<10} {s:8.1f} s")
    rest = got["row_seconds"] - got["eval_seconds"] - sum(got["calib_seconds_by_method"].values())
    print(f"rest of the rows (energy, ...) {rest:8.1f} s")
    print(f"outside rows                   {got['outside_rows_seconds']:8.1f} s")
    for k, v in got["phases"].items():
        print(f"  phase {k:<24} {v:8.1f} s")
    print("\nper model:  rows  eval s  images/s  calib s")
    for name, m in got["per_model"].items():
        rate = m["images"] / m["eval_seconds"] if m["eval_seconds"] else 0.0
        print(
            f"  {name:<16} {m['rows']:3.0f} {m['eval_seconds']:7.1f} {rate:9.0f} "
            f"{m['calib_seconds']:8.1f}"
        )
    print(f"\noverhead: wall / evaluations = {got['overhead']:.3f}")
    print(f"wall / (evaluations + reconstruction methods) = {got['overhead_methods_as_work']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
