"""Study wall time in-process and on a local Ray instance with 1 and 2 workers.

A 12-row study (ResNet-20, CIFAR-10, W8A8/W6A6/W4A4 x 4 calibration seeds, the first
--limit test images) is run three times into fresh folders: in this process, then with
`--executor ray` on 1 and on 2 CPUs. Prints each wall time and the speed-ups against the
1-worker run, and checks that all three stored the same rows. Not a test: `make bench-scale`.

    python benchmarks/scale_out.py [--limit 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from eaq.paths import resolve_data_root
from eaq.study import VOLATILE_COLUMNS, Store, parse_study, run_study
from eaq.study.executors import InProcessExecutor, RayExecutor

STUDY = """\
study: scale-out
seeds: [0, 1, 2, 3]
calib_size: 256
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: W8A8, strategy: uniform, w_bits: 8}
  - {name: W6A6, strategy: uniform, w_bits: 6}
  - {name: W4A4, strategy: uniform, w_bits: 4}
"""


def rows(folder: Path) -> list[dict]:
    with Store.open_folder(folder) as s:
        return [{k: v for k, v in r.items() if k not in VOLATILE_COLUMNS} for r in s.results()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=2000, help="test images per row")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = resolve_data_root(args.data_root)
    cfg = parse_study(STUDY).with_limit(args.limit)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in (
            ("in-process", lambda: InProcessExecutor()),
            ("ray, 1 worker", lambda: RayExecutor(root, num_cpus=1)),
            ("ray, 2 workers", lambda: RayExecutor(root, num_cpus=2)),
        ):
            executor = make()
            out = Path(tmp) / label.replace(" ", "").replace(",", "-")
            t0 = time.perf_counter()
            try:
                run_study(cfg, out, data_root=root, progress=False, executor=executor)
            finally:
                executor.close()
            runs[label] = {"seconds": time.perf_counter() - t0, "rows": rows(out)}
    same = all(r["rows"] == runs["in-process"]["rows"] for r in runs.values())
    one = runs["ray, 1 worker"]["seconds"]
    result = {
        "rows": len(runs["in-process"]["rows"]),
        "same_rows": same,
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "speedup_2_vs_1_worker": one / runs["ray, 2 workers"]["seconds"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['rows']} rows, {args.limit} test images each; identical rows: {same}")
    for label, r in runs.items():
        print(f"  {label:15s} {r['seconds']:7.1f} s   {one / r['seconds']:.2f}x the 1-worker run")
    print(f"speed-up of 2 workers over 1: {result['speedup_2_vs_1_worker']:.2f}x")


if __name__ == "__main__":
    main()
