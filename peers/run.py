"""Peer-toolkit benchmark (issue #32): quantize eaq's reference checkpoints with other PTQ
toolkits on the same calibration images and measure them the same way eaq does.

Each cell is (model, width, peer, recipe). For a cell the harness loads the model's default
checkpoint, draws the same 256 training images eaq calibrates on (``eaq.calibration_batches``,
seed 0, the model's mean/std/size), lets the peer quantize a copy (timed: ``calib_seconds``),
and evaluates top-1 on the first ``--limit`` test images with ``eaq.evaluate`` over
``eaq.eval_batches``. One JSON row per cell is appended to ``OUT/rows.jsonl`` as it finishes;
a rerun skips cells whose row exists (same limit), so a killed run resumes. Widths a peer
cannot express give a row with status ``unsupported``; exceptions a row with status
``failed`` and the one-line error. Run it in .venv-peers (``bash peers/setup.sh``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

import torch

import eaq
from eaq.energy.cost import energy
from eaq.models import get_model_info
from eaq.paths import default_data_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WIDTHS, CallableModel, Width, layer_widths, parse_width  # noqa: E402

# peer name -> its module in peers/ (named *_peer so that none shadows the real package)
PEER_MODULES = {
    "onnxruntime": "onnxruntime_peer",
    "torchao": "torchao_peer",
    "brevitas": "brevitas_peer",
    "nncf": "nncf_peer",
    "aimet": "aimet_peer",
    "modelopt": "modelopt_peer",
}
MODELS = ("resnet18_cifar", "deit_tiny_cifar", "resnet20_cifar", "mobilenetv2_cifar")
CALIB_SIZE = 256
CALIB_SEED = 0
KEY = ("model", "width", "peer", "recipe", "limit")


def load_peer(name: str) -> ModuleType:
    """Import a peer's module; ValueError naming the valid peers for an unknown name."""
    if name not in PEER_MODULES:
        raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEER_MODULES)}")
    return importlib.import_module(PEER_MODULES[name])


def peer_version(peer: ModuleType) -> str:
    """The installed version of the peer's distribution."""
    return importlib.metadata.version(peer.PACKAGE)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, its message's first line, where it was raised."""
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" [{Path(frame.filename).name}:{frame.lineno}]" if frame else ""
    return f"{type(exc).__name__}: {message}{where}"


class ModelData:
    """One model's float checkpoint, calibration batches, test batches and FP32 top-1."""

    def __init__(self, name: str, limit: int | None, data_root: Path) -> None:
        info = get_model_info(name)
        norm = dict(mean=info.mean, std=info.std, input_size=info.input_size)
        self.family = info.family
        self.model = eaq.create_model(name, weights="default", data_root=data_root)
        train = eaq.load_dataset(info.default_dataset, "train", data_root)
        test = eaq.load_dataset(info.default_dataset, "test", data_root)
        self.calib = eaq.calibration_batches(train, n=CALIB_SIZE, seed=CALIB_SEED, **norm)
        self.test = eaq.eval_batches(test, limit=limit, **norm)
        self.fp32_top1 = eaq.evaluate(self.model, self.test, progress=False).top1
        self.stats = eaq.collect_stats(self.model, info.input_size)


def empty_row(data: ModelData) -> dict:
    """A row's fields other than the cell's key, before anything is measured."""
    return {
        "peer_version": None,
        "status": "ok",
        "top1": None,
        "fp32_top1": round(data.fp32_top1, 4),
        "n_images": data.test.n_images,
        "calib_seconds": None,
        "quantized_layers": None,
        "attention_matmuls": None,
        "first_last": None,
        "float_layers": [],
        "relative_energy": None,
        "relative_bops": None,
        "error": "",
        "workaround": "",
    }


def run_cell(data: ModelData, width: Width, peer: ModuleType, recipe: str) -> dict:
    """Quantize a copy of the model with one peer recipe and measure it; the row's fields
    other than the cell's key."""
    if recipe not in peer.RECIPES:
        raise ValueError(f"unknown {peer.PEER} recipe {recipe!r}; valid: {', '.join(peer.RECIPES)}")
    row = empty_row(data) | {"peer_version": peer_version(peer)}
    reason = peer.unsupported(width, recipe, data.family)
    if reason:
        return row | {"status": "unsupported", "error": reason}
    torch.manual_seed(CALIB_SEED)
    model = copy.deepcopy(data.model)
    try:
        start = time.perf_counter()
        quantized, info = peer.quantize(model, data.calib, width, recipe)
        row["calib_seconds"] = round(time.perf_counter() - start, 2)
        row |= {k: info.get(k) for k in ("quantized_layers", "attention_matmuls", "first_last")}
        if data.family != "vit":
            row["attention_matmuls"] = None
        row["workaround"] = info.get("workaround", "")
        result = eaq.evaluate(CallableModel(quantized), data.test, progress=False)
    except Exception as exc:  # any peer failure becomes a row, never a crash
        return row | {"status": "failed", "error": one_line(exc)}
    row["top1"] = round(result.top1, 4)
    try:
        row |= modelled_energy(data, width, info)
    except Exception as exc:  # eaq's side: keep the measured top-1, say what failed
        row["error"] = f"energy model: {one_line(exc)}"
    return row


def modelled_energy(data: ModelData, width: Width, info: dict) -> dict:
    """The peer configuration under eaq's energy model: relative energy per eaq profile
    (FP32 = 1) and relative BOPs, from the layers the peer quantized at which width."""
    widths = layer_widths(data.stats, width, info)
    reports = {p: energy(data.stats, widths, p) for p in eaq.profile_names()}
    return {
        "float_layers": list(info.get("float_layers") or []),
        "relative_energy": {p: round(r.relative_energy, 6) for p, r in reports.items()},
        "relative_bops": round(next(iter(reports.values())).relative_bops, 6),
    }


def read_rows(path: Path) -> list[dict]:
    """The rows written so far (none when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_table(rows: list[dict]) -> None:
    """The rows as a fixed-width table on stdout."""
    head = (
        "model",
        "width",
        "peer",
        "recipe",
        "status",
        "top1",
        "fp32",
        "n",
        "calib_s",
        "layers",
        "attn",
    )
    lines = [head]
    for r in rows:
        top1 = "" if r["top1"] is None else f"{r['top1']:.2f}"
        calib = "" if r["calib_seconds"] is None else f"{r['calib_seconds']:.1f}"
        attn = "" if r["attention_matmuls"] is None else str(r["attention_matmuls"]).lower()
        lines.append(
            (
                r["model"],
                r["width"],
                r["peer"],
                r["recipe"],
                r["status"],
                top1,
                f"{r['fp32_top1']:.2f}",
                str(r["n_images"]),
                calib,
                str(r["quantized_layers"] or ""),
                attn,
            )
        )
    sizes = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(size) for cell, size in zip(line, sizes, strict=True)))
    for r in rows:
        if r["error"] or r["workaround"]:
            note = " ".join(
                x for x in (r["error"], r["workaround"] and f"({r['workaround']})") if x
            )
            print(f"* {r['model']} {r['width']} {r['peer']}/{r['recipe']}: {note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python peers/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Recipes per peer: "
            + "; ".join(f"{p}: {', '.join(load_recipes(p))}" for p in PEER_MODULES)
            + ". Example (a smoke run): python peers/run.py --models resnet18_cifar "
            "--widths W8A8 --peers onnxruntime --limit 500"
        ),
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS[:2]),
        metavar="MODEL",
        help=f"eaq model names (default: {' '.join(MODELS[:2])})",
    )
    parser.add_argument(
        "--widths",
        nargs="+",
        default=["W8A8", "W4A4"],
        metavar="WIDTH",
        help=f"widths, any of {' '.join(WIDTHS)} (default: W8A8 W4A4)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        default=list(PEER_MODULES),
        metavar="PEER",
        help=f"peers, any of {' '.join(PEER_MODULES)} (default: all)",
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        metavar="RECIPE",
        help="only these recipe names (default: every recipe of each peer)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate on the first N test images (default: all 10,000)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/peers"),
        help="folder for rows.jsonl (default: runs/peers)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="data and weights root (default: $EAQ_DATA_ROOT or eaq's default)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run cells again whose row has status failed"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the rows of this invocation's cells as a JSON list",
    )
    parser.add_argument(
        "--versions",
        action="store_true",
        help="print each peer's import status and version, and exit",
    )
    args = parser.parse_args(argv)
    try:
        args.widths = [parse_width(w) for w in args.widths]
        for name in args.peers:
            if name not in PEER_MODULES:
                raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEER_MODULES)}")
        for name in args.models:
            get_model_info(name)
    except (ValueError, eaq.EaqError) as exc:
        parser.error(str(exc))
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if os.environ.get("PEERS_ADAROUND_ITERS") and args.limit is None:
        parser.error(
            "PEERS_ADAROUND_ITERS caps AIMET's AdaRound for smoke runs only; give --limit, "
            "or unset it for a full run"
        )
    return args


def load_recipes(name: str) -> list[str]:
    """A peer's recipe names, read without importing the peer's toolkit when it is missing."""
    try:
        return list(load_peer(name).RECIPES)
    except ImportError:
        return ["(not importable)"]


def print_versions() -> None:
    """One line per peer: its version, or why it does not import."""
    for name in PEER_MODULES:
        try:
            print(f"{name}: {peer_version(load_peer(name))}")
        except Exception as exc:  # report and go on to the next peer
            print(f"{name}: not importable: {one_line(exc)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.versions:
        print_versions()
        return 0
    data_root = args.data_root or default_data_root()
    rows_path = args.out / "rows.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = {tuple(r[k] for k in KEY): r for r in read_rows(rows_path)}
    this_run: list[dict] = []
    for model_name in args.models:
        data: ModelData | None = None  # loaded only when one of its cells has to run
        for width in args.widths:
            for peer_name in args.peers:
                try:
                    peer = load_peer(peer_name)
                    recipes = [
                        r for r in peer.RECIPES if args.recipes in (None, []) or r in args.recipes
                    ]
                except Exception as exc:  # a peer that does not import is a failed row
                    peer, recipes, import_error = None, ["-"], one_line(exc)
                for recipe in recipes:
                    key = (model_name, width.name, peer_name, recipe, args.limit)
                    old = done.get(key)
                    stale = old and old["status"] == "ok" and not old.get("relative_energy")
                    retry = old and args.retry_failed and old["status"] == "failed"
                    if old and not (stale or retry):  # stale: a row from before energy
                        this_run.append(old)
                        continue
                    data = data or ModelData(model_name, args.limit, data_root)
                    if peer is None:
                        row = empty_row(data) | {
                            "status": "failed",
                            "error": f"import: {import_error}",
                        }
                    else:
                        row = run_cell(data, width, peer, recipe)
                    row = dict(zip(KEY, key, strict=True)) | row
                    with rows_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    this_run.append(row)
                    print(
                        f"{model_name} {width.name} {peer_name}/{recipe}: {row['status']} "
                        f"top1={row.get('top1')} calib={row.get('calib_seconds')}s",
                        file=sys.stderr,
                        flush=True,
                    )
    if args.json:
        print(json.dumps(this_run, indent=1))
    else:
        print_table(this_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
