"""The peer benchmark's tables (issue #32): peers' rows beside eaq's best measured row.

``python peers/report.py --import runs/peers`` stores the full-test-set rows of a benchmark run
in ``results/peers.json`` (merged with the rows already there, a newer row replacing an older
one of the same cell); ``python peers/report.py`` alone rewrites ``results/peers.csv`` and
``docs/peers.md`` from ``results/peers.json`` and eaq's stored study results
(``results/*.json``, written by ``eaq tables --import``). Nothing in the page is typed.

Each peer row is set beside eaq's best row for the same model and width: the uniform
configuration at that weight/activation width with the highest top-1 on the same number of
test images, any method, calibration seed 0. Its calibration size is shown, since eaq's
studies do not all calibrate on the peers' 256 images. A ``note`` column flags the cells the
issue asks about: a peer more than 0.3 points above eaq's best, or within 0.3 points and
faster than every eaq row that is within 0.3 points of eaq's best (where only eaq's best is
slower, the note names eaq's quicker row).

Per model, the page also shows eaq's report Pareto plot (``eaq report --peers``) of the study
named in ``FRONTS`` with the peers' points on it, written to ``docs/figures/peers/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = ("model", "width", "peer", "recipe")
MARGIN = 0.3  # points: "beats eaq" / "equal accuracy" in the notes
# The stored eaq studies whose configurations make each model's Pareto plot: those that run
# the presets and plain PTQ at the peers' widths with 3 seeds, on all test images (below 4 bits,
# the plain-PTQ points near 0% would squeeze the rest into a line), and those in the peers' own
# setting of 256 calibration images.
FRONTS = {
    "resnet18_cifar": (
        "ptq-targets-cifar100.json",
        "ptq-widths-cifar100.json",
        "gptq-w4a8-cifar100.json",
        "resnet18-cifar100-peer-setting.json",
    ),
    "deit_tiny_cifar": (
        "ptq-targets-cifar100.json",
        "ptq-widths-cifar100.json",
        "deit-tiny-cifar100-noattn-widths.json",
        "deit-tiny-cifar100-noattn-gptq.json",
        "deit-tiny-cifar100-peer-setting.json",
    ),
    "mobilenetv2_cifar": ("mobilenetv2-cifar100.json",),
    "resnet20_cifar": ("resnet20-cifar10-widths.json", "gptq-w4a8-resnet20-cifar10.json"),
}
CSV_FIELDS = (
    "model",
    "width",
    "peer",
    "recipe",
    "peer_version",
    "status",
    "top1",
    "fp32_top1",
    "n_images",
    "calib_seconds",
    "quantized_layers",
    "attention_matmuls",
    "relative_energy_seed",
    "relative_energy_horowitz45nm",
    "eaq_config",
    "eaq_method",
    "eaq_top1",
    "eaq_calib_seconds",
    "eaq_calib_size",
    "eaq_attention_matmuls",
    "eaq_relative_energy",
    "difference",
    "note",
    "error",
    "workaround",
)


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not JSON lines: {e}") from None


def read_store(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path} is not a peers results file ({e})") from None
    missing = [k for k in (*KEY, "status", "top1", "n_images") for r in rows if k not in r]
    if missing:
        raise SystemExit(f"error: {path}: rows lack {sorted(set(missing))}")
    return rows


def import_rows(run: Path, store: Path) -> list[dict]:
    """Merge ``run/rows.jsonl``'s full-test-set rows (``limit`` null) into ``store``."""
    src = run / "rows.jsonl"
    if not src.is_file():
        raise SystemExit(f"error: {src} does not exist; run peers/run.py --out {run} first")
    new = [r for r in read_jsonl(src) if r.get("limit") is None]
    if not new:
        raise SystemExit(
            f"error: {src} holds no full-test-set rows (every row has a --limit); "
            "run peers/run.py without --limit"
        )
    old = read_store(store) if store.is_file() else []
    merged = {tuple(r[k] for k in KEY): r for r in old}
    merged.update({tuple(r[k] for k in KEY): r for r in new})
    rows = sorted(merged.values(), key=lambda r: tuple(str(r[k]) for k in KEY))
    store.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"{len(new)} rows from {src} -> {store} ({len(rows)} in all)")
    return rows


def eaq_rows(results: Path) -> list[dict]:
    """eaq's stored study rows (every ``results/*.json`` but the peers' own)."""
    rows = []
    for path in sorted(results.glob("*.json")):
        if path.name == "peers.json":
            continue
        for r in json.loads(path.read_text()).get("rows", []):
            rows.append(r | {"source": path.name})
    return rows


def eaq_attention(row: dict) -> bool:
    """Whether an eaq row quantized the attention matmuls (uniform rows do, unless their
    ``float_kinds`` keeps matmuls in float)."""
    return "matmul" not in (row["info"].get("float_kinds") or [])


def eaq_same_width(
    rows: list[dict], model: str, width: str, n_images: int, attention: bool | None = None
) -> list[dict]:
    """eaq's uniform rows at ``width`` (e.g. ``W4A4``) on ``model``, seed 0, on the same number
    of test images; for a ViT peer (``attention`` not None) the rows that treat the attention
    matmuls as the peer does, where eaq has such rows."""
    w, a = (int(x) for x in width[1:].split("A"))
    same = [
        r
        for r in rows
        if r["model"] == model
        and r.get("strategy") == "uniform"
        and r.get("seed") == 0
        and r.get("n_images") == n_images
        and r["info"].get("w_bits") == w
        and r["info"].get("a_bits") == a
    ]
    if attention is not None:
        same = [r for r in same if eaq_attention(r) == attention] or same
    return same


def eaq_best(
    rows: list[dict], model: str, width: str, n_images: int, attention: bool | None = None
) -> dict | None:
    """eaq's most accurate row of :func:`eaq_same_width`; None when eaq has no row."""
    return most_accurate(eaq_same_width(rows, model, width, n_images, attention))


def most_accurate(same: list[dict]) -> dict | None:
    """The row of ``same`` with the highest top-1; None for no rows."""
    return max(same, key=lambda r: r["top1"]) if same else None


def eaq_fastest(same: list[dict], best: dict | None) -> dict | None:
    """The row of ``same`` with the shortest calibration among those as accurate as ``best``
    (within ``MARGIN`` points of it)."""
    if best is None:
        return None
    level = [r for r in same if r["top1"] >= best["top1"] - MARGIN]
    return min(level, key=lambda r: r.get("calib_seconds") or 0)


def note(peer: dict, best: dict | None, fastest: dict | None = None) -> str:
    """``peer ahead by X`` past ``MARGIN``; ``peer as accurate and faster`` when it is within
    ``MARGIN`` of eaq's best and faster than every eaq row that is (``fastest``, the quickest of
    them); when only eaq's best is slower, the note names eaq's faster row instead."""
    if peer["status"] != "ok" or best is None:
        return ""
    diff = peer["top1"] - best["top1"]
    if diff > MARGIN:
        return f"peer ahead by {diff:.2f}"
    if abs(diff) > MARGIN or peer["calib_seconds"] >= (best.get("calib_seconds") or 0):
        return ""
    quickest = fastest or best
    if peer["calib_seconds"] < (quickest.get("calib_seconds") or 0):
        return "peer as accurate and faster"
    return (
        f"faster than eaq's best; eaq's {quickest['config']} is as accurate in "
        f"{quickest['calib_seconds']:.1f} s"
    )


def table_rows(peers: list[dict], eaq: list[dict]) -> list[dict]:
    out = []
    for p in peers:
        same = eaq_same_width(
            eaq, p["model"], p["width"], p["n_images"], p.get("attention_matmuls")
        )
        best = most_accurate(same)
        energy = p.get("relative_energy") or {}
        row = {k: p.get(k) for k in CSV_FIELDS if k in p}
        row |= {
            "relative_energy_seed": energy.get("seed"),
            "relative_energy_horowitz45nm": energy.get("horowitz45nm"),
            "eaq_config": best and best["config"],
            "eaq_method": best and best["method"],
            "eaq_top1": best and round(best["top1"], 2),
            "eaq_calib_seconds": best and round(best["calib_seconds"], 1),
            "eaq_calib_size": best and best["calib_size"],
            "eaq_attention_matmuls": best
            and p.get("attention_matmuls") is not None
            and eaq_attention(best),
            "eaq_relative_energy": best and round(best["relative_energy"], 4),
            "difference": round(p["top1"] - best["top1"], 2)
            if best and p["status"] == "ok"
            else None,
            "note": note(p, best, eaq_fastest(same, best)),
        }
        out.append(row)
    return out


def _fmt(v, digits: int = 2) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def front_rows(sources: list[Path], model: str) -> tuple[list[dict], str]:
    """``model``'s rows of the stored studies ``sources`` and their energy profile. One FP32
    row set is kept; a configuration name in two studies, or two profiles, is an error, since
    their rows would be averaged as one point."""
    rows: list[dict] = []
    profiles, seen = set(), {}
    for source in sources:
        stored = json.loads(source.read_text())
        profiles.add(stored["study"]["profile"])
        for r in stored["rows"]:
            if r["model"] != model:
                continue
            if r["strategy"] == "fp32" and seen.get(r["config"], source.name) != source.name:
                continue
            if seen.setdefault(r["config"], source.name) != source.name:
                raise SystemExit(
                    f"error: {model} config {r['config']!r} is in both {seen[r['config']]} and "
                    f"{source.name}; rename one for the plot"
                )
            rows.append(r)
    if len(profiles) > 1:
        raise SystemExit(f"error: {model}'s studies use profiles {sorted(profiles)}; need one")
    return rows, profiles.pop()


def write_figures(store: Path, results: Path, folder: Path) -> dict[str, str]:
    """Per model with studies in ``FRONTS``: eaq's report Pareto plot of those studies' rows
    with the peers' full-test-set points (``eaq report --peers``), as ``folder/MODEL_pareto.png``.
    Returns model -> the figure's path."""
    from eaq.study.report import pareto_plot, peer_points, summarize

    folder.mkdir(parents=True, exist_ok=True)
    figures = {}
    points_by_profile: dict[str, list[dict]] = {}  # the store read once per energy profile
    for model in sorted({r["model"] for r in read_store(store)}):
        sources = [results / name for name in FRONTS.get(model, ())]
        missing = [s.name for s in sources if not s.is_file()]
        if not sources or missing:
            why = f"{', '.join(missing)} not in {results}" if missing else "no study in FRONTS"
            print(f"{model}: {why}; no plot")
            continue
        rows, profile = front_rows(sources, model)
        n_images = {r["n_images"] for r in rows}
        if profile not in points_by_profile:
            points_by_profile[profile] = peer_points(store, profile)
        points = [
            p
            for p in points_by_profile[profile]
            if p["model"] == model and p["n_images"] in n_images
        ]
        name = pareto_plot(summarize(rows), model, folder, peers=points)
        (folder / name).with_suffix(".svg").unlink()  # the page shows the PNG
        figures[model] = str(folder / name)
    return figures


def markdown(rows: list[dict], peers: list[dict], figures: dict[str, str] | None = None) -> str:
    versions = sorted({(p["peer"], p["peer_version"]) for p in peers if p.get("peer_version")})
    lines = [
        "# eaq beside the peer toolkits",
        "",
        "<!-- generated by `python peers/report.py` from results/peers.json and eaq's "
        "results/*.json; do not edit -->",
        "",
        "Each peer's PTQ recipe on eaq's reference checkpoints, the same 256 calibration images "
        "(training split, seed 0) and all test images, beside eaq's best measured uniform "
        "configuration at the same width (any method, seed 0). How the peers run, what each "
        "can express and the workarounds: [peers/README.md](../peers/README.md). "
        "`energy` is the peer's configuration under eaq's `seed` energy profile (FP32 = 1), "
        "from the layers it quantized at which width. `diff` is the peer's top-1 minus eaq's. "
        "`note` flags a peer more than 0.3 points ahead, or as accurate (within 0.3 points) "
        "and faster than each of eaq's rows at the width that are as accurate as its best. "
        "Calibration times are wall times on this project's 2-core CPU, but eaq's come from "
        "its study runs and the peers' from the benchmark, not from one run: compare them "
        "as orders of magnitude.",
        "",
        "Versions: " + ", ".join(f"{p} {v}" for p, v in versions) + ".",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        ms = [r for r in rows if r["model"] == model]
        if len({(r["fp32_top1"], r["n_images"]) for r in ms}) > 1:
            raise SystemExit(f"error: {model}'s rows disagree on FP32 top-1 or test images")
        fp32 = ms[0]["fp32_top1"]
        lines += [f"## {model} (FP32 {fp32:.2f}, {ms[0]['n_images']} test images)", ""]
        if model in (figures or {}):
            studies = ", ".join(f"`{name.removesuffix('.json')}`" for name in FRONTS[model])
            lines += [
                f"![{model}: top-1 against relative energy, eaq and the peers]({figures[model]})",
                "",
                f"eaq's points are the configurations of the studies {studies} (mean of their "
                "seeds, the dashed line their Pareto front); each cross is a peer recipe's row "
                "below.",
                "",
            ]
        head = (
            "width | peer / recipe | status | top-1 | calib s | layers | attn | energy | "
            "eaq best (method, calib images, attn) | eaq top-1 | eaq calib s | diff | note"
        )
        lines += ["| " + head + " |", "|" + "---|" * (head.count("|") + 1)]
        for r in ms:
            attn = (
                ""
                if r["attention_matmuls"] is None
                else f", attn {_fmt(r['eaq_attention_matmuls'])}"
            )
            eaq_cfg = (
                f"{r['eaq_config']} ({r['eaq_method']}, {r['eaq_calib_size']}{attn})"
                if r["eaq_config"]
                else "not measured"
            )
            status = r["status"] if r["status"] == "ok" else f"{r['status']}*"
            cells = [
                r["width"],
                f"{r['peer']} / {r['recipe']}",
                status,
                _fmt(r["top1"]),
                _fmt(r["calib_seconds"], 1),
                _fmt(r["quantized_layers"]),
                _fmt(r["attention_matmuls"]),
                _fmt(r["relative_energy_seed"], 3),
                eaq_cfg,
                _fmt(r["eaq_top1"]),
                _fmt(r["eaq_calib_seconds"], 1),
                _fmt(r["difference"]),
                r["note"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        notes = [r for r in ms if r.get("error") or r.get("workaround")]
        for r in notes:
            text = "; ".join(x for x in (r.get("error"), r.get("workaround")) if x)
            lines.append(f"- {r['width']} {r['peer']} / {r['recipe']}: {text}")
        lines += [""] if notes else []
    lines += ["\\* unsupported: the peer cannot express the width; failed: the error above.", ""]
    return "\n".join(lines)


def write_outputs(
    store: Path, results: Path, csv_path: Path, doc: Path, figures: Path | None = None
) -> list[dict]:
    if not store.is_file():
        raise SystemExit(
            f"error: {store} does not exist; import a full run first: "
            "python peers/report.py --import runs/peers"
        )
    peers = read_store(store)
    rows = table_rows(peers, eaq_rows(results))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    drawn = write_figures(store, results, figures) if figures is not None else {}
    links = {m: Path(f).relative_to(doc.parent).as_posix() for m, f in drawn.items()}
    doc.write_text(markdown(rows, peers, links))
    print(f"{len(rows)} rows -> {csv_path}, {doc}" + (f", {len(drawn)} plots" if drawn else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python peers/report.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--import",
        dest="run",
        type=Path,
        default=None,
        help="a peers/run.py output folder whose full-test-set rows to store first",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "peers.md", help="page")
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="leave out the Pareto plots (written to the page's figures/peers/ folder)",
    )
    args = parser.parse_args(argv)
    store = args.results / "peers.json"
    if args.run is not None:
        import_rows(args.run, store)
    figures = None if args.no_plots else args.doc.parent / "figures" / "peers"
    write_outputs(store, args.results, args.results / "peers.csv", args.doc, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
