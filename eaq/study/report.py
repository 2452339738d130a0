"""Reports generated from a study's database alone: tables, plots (PNG and SVG), CSV/JSON.

``write_report(folder)`` writes, into ``folder/report/``: ``report.md``, ``report.html``,
``rows.csv`` and ``rows.json`` (per seed), ``summary.csv`` and ``summary.json`` (mean and spread
over seeds), ``front_vs_uniform.json`` (each mixed family's front read at each uniform
configuration's energy, also a table in the report), and per model the Pareto plot, the
energy breakdown (MAC vs memory), the per-layer sensitivity and the per-layer widths of the
mixed configurations.
"""

from __future__ import annotations

import csv
import html
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from eaq.errors import EaqError
from eaq.methods.registry import METHODS, method_chain
from eaq.mixed.pareto import best_within, pareto_front
from eaq.study.published import (
    compare,
    comparison_table,
    layers_table,
    load_published,
    notes_md,
)
from eaq.study.store import Store

SUMMARY_FIELDS = (
    "model",
    "config",
    "config_base",
    "granularity",
    "strategy",
    "method",
    "dataset",
    "relative_energy",
    "energy_savings",
    "mac_share",
    "memory_share",
    "relative_bops",
    "top1_mean",
    "top1_std",
    "top1_min",
    "top1_max",
    "delta_top1",
    "n_seeds",
    "n_images",
    "calib_seconds_mean",
    "bits",
    "selected",
    "onnx_top1_mean",
)


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (model, config): accuracy mean/std/min/max over seeds, energy, Δ vs FP32."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["config"])].append(r)
    out = []
    for (model, config), rs in groups.items():
        top1 = [r["top1"] for r in rs]
        bits: dict[str, float] = defaultdict(float)
        for r in rs:
            for k, v in r["bits"].items():
                bits[k] += v / len(rs)
        rel = statistics.fmean(r["relative_energy"] for r in rs)
        selected = [_chosen(r) for r in sorted(rs, key=lambda r: r["seed"])]
        onnx = [r["info"]["onnx"]["top1"] for r in rs if "onnx" in r["info"]]
        out.append(
            {
                "model": model,
                "config": config,
                "config_base": rs[0]["info"].get("config_base", config),
                "granularity": rs[0]["info"].get("granularity"),
                "strategy": rs[0]["strategy"],
                "method": method_label(rs[0]),
                "dataset": rs[0]["dataset"],
                "relative_energy": rel,
                "energy_savings": 1.0 - rel,
                "mac_share": statistics.fmean(r["mac_share"] for r in rs),
                "memory_share": statistics.fmean(r["memory_share"] for r in rs),
                "relative_bops": statistics.fmean(r["relative_bops"] for r in rs),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "top1_min": min(top1),
                "top1_max": max(top1),
                "n_seeds": len(rs),
                "n_images": rs[0]["n_images"],
                "calib_seconds_mean": statistics.fmean(r["calib_seconds"] for r in rs),
                "bits": {k: round(v, 2) for k, v in bits.items()},
                "selected": selected if any(selected) else None,
                "onnx_top1_mean": statistics.fmean(onnx) if onnx else None,
            }
        )
    fp32 = {r["model"]: r["top1_mean"] for r in out if r["strategy"] == "fp32"}
    for r in out:
        r["delta_top1"] = r["top1_mean"] - fp32[r["model"]] if r["model"] in fp32 else None
    out.sort(key=lambda r: (r["model"], -r["relative_energy"], r["config"]))
    return out


def method_label(row: dict) -> str:
    """A row's method as run: ``repq → qdrop`` for repq handing over to qdrop (its ``then``)."""
    method = row["method"]
    if method in METHODS:
        options = row["info"].get("method_options") or {}
        return " → ".join(method_chain(method, options))
    return method  # "none" (FP32), or a method this eaq no longer registers


def _chosen(row: dict) -> str | None:
    """Which candidate a ``select: loss`` budget row kept (``milp`` or a uniform plan)."""
    for c in row["info"].get("candidates") or []:
        if c["chosen"]:
            return c["name"]
    return None


def _bits_text(bits: dict) -> str:
    total = sum(bits.values()) or 1
    return ", ".join(f"{k}-bit: {v:g} ({100 * v / total:.0f}%)" for k, v in bits.items())


def table_md(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    onnx = any(r["onnx_top1_mean"] is not None for r in summary)
    headers = ["Config", "Method", "Accuracy (%)", "Δ Acc.", "Rel. Energy", "Energy Savings"]
    headers += ["Calib. (s)", "Seeds"] + (["onnxruntime (%)"] if onnx else [])
    rows = []
    for r in summary:
        acc = f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"
        delta = (
            "—" if r["strategy"] == "fp32" or r["delta_top1"] is None else f"{r['delta_top1']:+.2f}"
        )
        savings = "—" if r["strategy"] == "fp32" else f"{100 * r['energy_savings']:.1f}%"
        calib = "—" if r["strategy"] == "fp32" else f"{r['calib_seconds_mean']:.1f}"
        rows.append(
            [r["config"], r["method"], acc, delta, f"{r['relative_energy']:.4f}", savings]
            + [calib, str(r["n_seeds"])]
            + ([_maybe(r["onnx_top1_mean"])] if onnx else [])
        )
    return headers, rows


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def deploy_commands(rows: list[dict], folder: Path) -> list[dict]:
    """For each quantized configuration: its plan file and the command that saves it.

    The plan of the configuration's lowest seed is written to ``folder/plans/``; ``eaq quantize
    --plan FILE --save DIR`` then calibrates with that seed and writes the artifact.
    """
    first: dict[tuple[str, str], dict] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["strategy"] != "fp32":
            first.setdefault((r["model"], r["config"]), r)
    plans = folder / "plans"
    out = []
    for (model, config), r in sorted(first.items()):
        stem = f"{model}__{config}__seed{r['seed']}".replace("/", "_")
        path = plans / f"{stem}.json"
        plans.mkdir(exist_ok=True)
        path.write_text(json.dumps(r["plan"], indent=2) + "\n")
        options = r["info"].get("method_options") or {}
        command = [
            "eaq quantize",
            f"--model {model}",
            f"--dataset {r['dataset']}",
            f"--plan {path}",
            f"--method {r['method']}",
            *(f"--method-option {k}={json.dumps(v)}" for k, v in options.items()),
            f"--seed {r['seed']}",
            f"--calib-size {r['calib_size']}",
            f"--save artifacts/{model}-{config.replace('@', '-')}",
        ]
        out.append({"model": model, "config": config, "command": " ".join(command)})
    return out


def _selected_table(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    """For ``select: loss`` budgets: the plan kept per seed (the program's or a uniform one)."""
    rows = [
        [r["config"], ", ".join(c or "—" for c in r["selected"])] for r in summary if r["selected"]
    ]
    return ["Config", "Plan kept per seed (lowest held-out KL)"], rows


def front_vs_uniform(summary: list[dict]) -> list[dict]:
    """Each mixed-precision family's front read at each uniform configuration's energy.

    For every ``budget``/``percentile`` config family (the configs of one study entry, e.g. a
    budget sweep) and every uniform configuration of the same model with the same quantizer set-up
    (PTQ method and weight granularity; the families choose widths, not set-ups): the most
    accurate point of the family whose energy is at most the uniform one's, and its accuracy
    minus the uniform one's (``delta``; None when the family has no point that cheap). A front
    that is never below uniform has ``delta >= 0`` everywhere.
    """
    out = []
    for model in sorted({r["model"] for r in summary}):
        ms = [r for r in summary if r["model"] == model]
        uniform = [r for r in ms if r["strategy"] == "uniform"]
        families = sorted(
            {r["config_base"] for r in ms if r["strategy"] in ("budget", "percentile")}
        )
        for family in families:
            pts = [r for r in ms if r["config_base"] == family]
            energy = [r["relative_energy"] for r in pts]
            accuracy = [r["top1_mean"] for r in pts]
            setup = (pts[0]["method"], pts[0]["granularity"])
            for u in (u for u in uniform if (u["method"], u["granularity"]) == setup):
                i = best_within(energy, accuracy, u["relative_energy"])
                best = pts[i] if i is not None else None
                out.append(
                    {
                        "model": model,
                        "family": family,
                        "uniform": u["config"],
                        "uniform_energy": u["relative_energy"],
                        "uniform_top1": u["top1_mean"],
                        "best": best["config"] if best else None,
                        "best_energy": best["relative_energy"] if best else None,
                        "best_top1": best["top1_mean"] if best else None,
                        "delta": best["top1_mean"] - u["top1_mean"] if best else None,
                    }
                )
    return out


def _front_table(comparison: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["Mixed family", "Uniform config", "Uniform acc. (energy)", "Best mixed within"]
    headers += ["Mixed acc. (energy)", "Δ mixed − uniform"]
    rows = []
    for c in comparison:
        if c["best"] is None:
            best, acc, delta = "— (none that cheap)", "—", "—"
        else:
            best = c["best"]
            acc = f"{c['best_top1']:.2f} ({c['best_energy']:.4f})"
            delta = f"{c['delta']:+.2f}"
        uni = f"{c['uniform_top1']:.2f} ({c['uniform_energy']:.4f})"
        rows.append([c["family"], c["uniform"], uni, best, acc, delta])
    return headers, rows


def _bits_table(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    widths = sorted({k for r in summary for k in r["bits"]}, key=lambda k: (k == "fp", k.zfill(3)))
    headers = ["Config"] + [f"{k}-bit layers" if k != "fp" else "float layers" for k in widths]
    rows = []
    for r in summary:
        if r["strategy"] in ("fp32", "uniform"):
            continue
        total = sum(r["bits"].values()) or 1
        rows.append(
            [r["config"]]
            + [
                f"{r['bits'].get(k, 0):g} ({100 * r['bits'].get(k, 0) / total:.1f}%)"
                for k in widths
            ]
        )
    return headers, rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, stem: str) -> list[str]:
    names = []
    for ext in ("png", "svg"):
        fig.savefig(folder / f"{stem}.{ext}", dpi=120, bbox_inches="tight")
        names.append(f"{stem}.{ext}")
    _plt().close(fig)
    return names


def pareto_plot(summary: list[dict], model: str, folder: Path, peers: Sequence[dict] = ()) -> str:
    """Top-1 against relative energy, the front dashed; ``peers`` (from :func:`peer_points`)
    are drawn beside eaq's points, one marker per toolkit."""
    plt = _plt()
    rs = [r for r in summary if r["model"] == model and r["strategy"] != "fp32"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"uniform": "s", "percentile": "^", "budget": "o"}
    for strategy in sorted({r["strategy"] for r in rs}):
        pts = [r for r in rs if r["strategy"] == strategy]
        ax.errorbar(
            [r["relative_energy"] for r in pts],
            [r["top1_mean"] for r in pts],
            yerr=[r["top1_std"] for r in pts],
            fmt=markers.get(strategy, "D"),
            label=strategy,
            capsize=2,
            alpha=0.8,
        )
    xs = [r["relative_energy"] for r in rs]
    front = pareto_front(xs, [r["top1_mean"] for r in rs])
    ax.plot(
        [rs[i]["relative_energy"] for i in front],
        [rs[i]["top1_mean"] for i in front],
        "k--",
        lw=1,
        label="Pareto front",
    )
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for k, i in enumerate(front):
        # Labels alternate above and below the front to stay legible; those in the right half
        # end at their point, so that a long name stays inside the axes.
        right = rs[i]["relative_energy"] > middle
        ax.annotate(
            rs[i]["config"],
            (rs[i]["relative_energy"], rs[i]["top1_mean"]),
            xytext=(-4 if right else 4, 8 if k % 2 == 0 else -14),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=7,
        )
    for peer in sorted({p["peer"] for p in peers if p["model"] == model}):
        pts = [p for p in peers if p["model"] == model and p["peer"] == peer]
        ax.scatter(
            [p["relative_energy"] for p in pts],
            [p["top1"] for p in pts],
            marker="x",
            s=30,
            label=f"{peer} (peer)",
        )
    fp32 = [r for r in summary if r["model"] == model and r["strategy"] == "fp32"]
    if fp32:
        ax.axhline(fp32[0]["top1_mean"], color="grey", lw=0.8, ls=":", label="FP32")
    ax.set_xlabel("relative energy (FP32 = 1)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{model}: accuracy vs energy")
    ax.legend(fontsize=8)
    _save(fig, folder, f"{model}_pareto")
    return f"{model}_pareto.png"


def peer_points(path: str | Path, profile: str) -> list[dict]:
    """Other toolkits' measured points from a peer benchmark's rows (``peers/run.py``'s
    ``rows.jsonl`` or ``results/peers.json``): those with status ``ok``, as ``model``,
    ``peer``, ``recipe``, ``width``, ``top1``, ``n_images`` and ``relative_energy`` under
    energy profile ``profile`` (the study's)."""
    path = Path(path)
    if not path.is_file():
        raise EaqError(
            f"peer rows {path} do not exist; give peers/run.py's rows.jsonl or results/peers.json"
        )
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EaqError(f"peer rows {path} are not a peer benchmark's rows: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise EaqError(f"peer rows {path} are not a list of JSON objects")
    latest = {}  # a cell run again (rows.jsonl appends): its last row
    for r in rows:
        latest[tuple(r.get(k) for k in ("model", "width", "peer", "recipe", "limit"))] = r
    points = []
    for r in latest.values():
        if r.get("status") != "ok":
            continue
        energies = r.get("relative_energy") or {}
        if profile not in energies:
            raise EaqError(
                f"peer rows {path} have no relative energy under profile {profile!r} "
                f"(they have {', '.join(sorted(energies)) or 'none'}); rerun peers/run.py"
            )
        try:
            fields = ("model", "peer", "recipe", "width", "top1", "n_images")
            points.append({k: r[k] for k in fields} | {"relative_energy": energies[profile]})
        except KeyError as e:
            raise EaqError(f"peer rows {path}: a row has no {e.args[0]!r}") from None
    return points


def _peers_table(points: list[dict], n_images: int) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            p["width"],
            f"{p['peer']} / {p['recipe']}",
            f"{p['top1']:.2f}",
            f"{p['relative_energy']:.3f}",
        ]
        for p in sorted(points, key=lambda p: (p["width"], p["peer"], p["recipe"]))
        if p["n_images"] == n_images
    ]
    return ["Width", "Peer / recipe", "Top-1", "Rel. energy"], rows


def energy_plot(summary: list[dict], model: str, folder: Path) -> str:
    plt = _plt()
    rs = [r for r in summary if r["model"] == model]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rs)), 4))
    x = range(len(rs))
    mac = [r["relative_energy"] * r["mac_share"] for r in rs]
    mem = [r["relative_energy"] * r["memory_share"] for r in rs]
    ax.bar(x, mac, label="MAC")
    ax.bar(x, mem, bottom=mac, label="memory")
    ax.set_xticks(list(x), [r["config"] for r in rs], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("relative energy (FP32 = 1)")
    ax.set_title(f"{model}: energy breakdown")
    ax.legend()
    _save(fig, folder, f"{model}_energy")
    return f"{model}_energy.png"


def sensitivity_plot(rows: list[dict], model: str, folder: Path, stem: str | None = None) -> str:
    plt = _plt()
    rows = [r for r in rows if r["model"] == model] if rows and "model" in rows[0] else rows
    seed = min((r.get("seed", 0) for r in rows), default=0)
    rows = [r for r in rows if r.get("seed", 0) == seed]
    layers = sorted({(r["index"], r["layer"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
    for w, a in sorted({(r["w_bits"], r["a_bits"]) for r in rows}):
        vals = {r["index"]: r["value"] for r in rows if (r["w_bits"], r["a_bits"]) == (w, a)}
        ax.plot([vals.get(i) for i, _ in layers], marker="o", ms=3, label=f"W{w}A{a}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), [n for _, n in layers], rotation=90, fontsize=6)
    ax.set_ylabel(f"sensitivity ({rows[0]['measure'] if rows else ''})")
    ax.set_title(f"{model}: per-layer sensitivity (seed {seed})")
    ax.legend(fontsize=8)
    stem = stem or f"{model}_sensitivity"
    _save(fig, folder, stem)
    return f"{stem}.png"


def widths_plot(rows: list[dict], model: str, folder: Path) -> str | None:
    plt = _plt()
    seed = min((r["seed"] for r in rows if r["model"] == model), default=0)
    rs = [
        r
        for r in rows
        if r["model"] == model and r["seed"] == seed and r["strategy"] in ("percentile", "budget")
    ]
    if not rs:
        return None
    layers = [layer["name"] for layer in rs[0]["layers"]]
    grid = [
        [max(b for b in (lr["w_bits"], lr["a_bits"], 0) if b is not None) for lr in r["layers"]]
        for r in rs
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 0.4 * len(rs) + 1.5))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rs)), [r["config"] for r in rs], fontsize=7)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    fig.colorbar(im, ax=ax, label="bits (max of W, A)")
    ax.set_title(f"{model}: per-layer widths (seed {seed})")
    _save(fig, folder, f"{model}_widths")
    return f"{model}_widths.png"


def _write_csv(path: Path, rows: list[dict], fields) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
            )


def write_report(
    folder: str | Path,
    *,
    store_url: str | None = None,
    published: str | Path | None = None,
    peers: str | Path | None = None,
) -> Path:
    """Regenerate ``folder/report/`` from ``folder``'s database (or the PostgreSQL store at
    ``store_url``); returns the report folder.

    ``published``: a published-results file (:mod:`eaq.study.published`) whose tables are set
    beside the measured rows, first in the report and in ``published_vs_measured.json``.
    ``peers``: a peer benchmark's rows (:func:`peer_points`), drawn on the Pareto plots and
    tabled per model where they were measured on as many test images as the study's rows.
    """
    pub = load_published(published) if published is not None else None  # fail before work
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with Store.open(folder, url=store_url) as store:
        rows = store.results()
        sens_rows = store.sensitivity_rows()
        config = json.loads(store.get_meta("config") or "{}")
    name = config.get("name", folder.name)
    points = peer_points(peers, config.get("profile", "seed")) if peers is not None else []
    out = folder / "report"
    out.mkdir(exist_ok=True)
    summary = summarize(rows)
    comparison = front_vs_uniform(summary)
    (out / "front_vs_uniform.json").write_text(json.dumps(comparison, indent=1) + "\n")
    flat = [{k: v for k, v in r.items() if k not in ("plan", "layers")} for r in rows]
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _write_csv(out / "rows.csv", flat, flat[0].keys() if flat else ["model"])
    _write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    deploy = deploy_commands(rows, out)

    md = [
        f"# Study {name}",
        "",
        f"{len(rows)} rows, generated from `{folder / 'study.sqlite'}`.",
        "",
    ]
    body = []  # (kind, payload) for html
    if pub is not None:
        records = compare(summary, pub)
        (out / "published_vs_measured.json").write_text(json.dumps(records, indent=1) + "\n")
        md += [f"## Published ({pub.source}) against measured", ""]
        body.append(("h2", f"Published ({pub.source}) against measured"))
        for rec in records:
            h, t, notes = comparison_table(rec)
            md += [f"{rec['title']}: published beside eaq's measured rows.", ""]
            md += [table_md(h, t), ""] + ([notes_md(notes), ""] if notes else [])
            body += [("p", rec["title"]), ("table", (h, t))]
            body += [("p", f"[{i}] {n}") for i, n in enumerate(notes, 1)]
        h, t = layers_table(records)
        if t:
            md += ["Layers per width of the mixed configuration (Table 3).", "", table_md(h, t)]
            md.append("")
            body.append(("table", (h, t)))
    for model in sorted({r["model"] for r in summary}):
        ms = [r for r in summary if r["model"] == model]
        ds = ms[0]["dataset"]
        md += [f"## {model} on {ds} ({ms[0]['n_images']} test images)", ""]
        body.append(("h2", f"{model} on {ds} ({ms[0]['n_images']} test images)"))
        h, t = main_table(ms)
        md += [
            "Accuracy (top-1, mean ± std over seeds) and energy relative to FP32.",
            "",
            table_md(h, t),
            "",
        ]
        body.append(("table", (h, t)))
        h, t = _bits_table(ms)
        if t:
            md += ["Bit-width distribution (mean over seeds).", "", table_md(h, t), ""]
            body.append(("table", (h, t)))
        h, t = _selected_table(ms)
        if t:
            md += [
                "Budgets with `select: loss`: the integer program's plan (`milp`) or the uniform "
                "plan within the budget with the lowest KL on held-out training images.",
                "",
                table_md(h, t),
                "",
            ]
            body.append(("table", (h, t)))
        h, t = _front_table([c for c in comparison if c["model"] == model])
        if t:
            md += [
                "Mixed precision against uniform: the most accurate point of each mixed family "
                "whose energy is at most that of a uniform configuration with the same method "
                "and granularity (a front never below uniform has Δ ≥ 0 in every row; means "
                "over seeds).",
                "",
                table_md(h, t),
                "",
            ]
            body.append(("table", (h, t)))
        t = [[d["config"], f"`{d['command']}`"] for d in deploy if d["model"] == model]
        if t:
            md += [
                "Each configuration as a deployable model: the command saves it (packed integer "
                "codes, scales and plan) for `eaq export DIR --onnx FILE`.",
                "",
                table_md(["Config", "Command"], t),
                "",
            ]
            body.append(("table", (["Config", "Command"], t)))
        # the seed's Figures 1-3, then the widths each plan gave each layer
        energy_caption = "Energy by component, MAC against memory (the seed's Figure 1)."
        pareto_caption = "Top-1 against relative energy, with the Pareto front (Figure 2)."
        n_images = ms[0]["n_images"]
        same = [p for p in points if p["model"] == model and p["n_images"] == n_images]
        h, t = _peers_table(same, n_images)
        if t:
            md += [
                "Other toolkits on the same checkpoint and test images (peers/run.py), their "
                "configurations costed by this study's energy profile.",
                "",
                table_md(h, t),
                "",
            ]
            body.append(("table", (h, t)))
        imgs = [
            (energy_caption, energy_plot(summary, model, out)),
            (pareto_caption, pareto_plot(summary, model, out, same)),
        ]
        for measure in sorted({r["measure"] for r in sens_rows if r["model"] == model}):
            srows = [r for r in sens_rows if r["model"] == model and r["measure"] == measure]
            img = sensitivity_plot(srows, model, out, f"{model}_sensitivity_{measure}")
            imgs.append((f"Per-layer sensitivity, measure {measure} (Figure 3).", img))
        wp = widths_plot(rows, model, out)
        if wp:
            imgs.append(("Bit width of each layer, per mixed configuration.", wp))
        for caption, img in imgs:
            md += [caption, "", f"![{img}]({img})", ""]
            body += [("p", caption), ("img", img)]
    (out / "report.md").write_text("\n".join(md) + "\n")

    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}</style>",
        f"<h1>Study {html.escape(name)}</h1>",
    ]
    for kind, payload in body:
        if kind == "h2":
            parts.append(f"<h2>{html.escape(payload)}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "table":
            h, t = payload
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in h) + "</tr>")
            parts += [
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                for row in t
            ]
            parts.append("</table><br>")
        else:
            parts.append(f"<p><img src='{html.escape(payload)}' style='max-width:100%'></p>")
    (out / "report.html").write_text("\n".join(parts) + "\n")
    return out
