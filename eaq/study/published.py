"""Published results set beside a study's measured rows ("seed (published) | eaq (measured)").

A published file (``studies/published/seed.yaml``) holds a paper's tables as printed: per table
the study models measured against it, each row's configuration (a config name of the study),
the paper's top-1 and relative energy, optionally its layer counts per width, and notes that
say why a measured number differs. :func:`compare` joins them with a study's summary rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from eaq.errors import EaqError


@dataclass(frozen=True)
class PublishedRow:
    config: str
    label: str
    top1: float
    relative_energy: float
    layers: dict[int, int] | None = None


@dataclass(frozen=True)
class PublishedTable:
    title: str
    models: tuple[str, ...]
    rows: tuple[PublishedRow, ...]
    notes: dict[str, str]


@dataclass(frozen=True)
class Published:
    source: str
    tables: tuple[PublishedTable, ...]


def load_published(path: str | Path) -> Published:
    """Read and check a published-results file.

    Raises:
        EaqError: the file is missing, or a table or row lacks a field or has a bad value.
    """
    p = Path(path)
    if not p.is_file():
        raise EaqError(f"published-results file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise EaqError(f"{p}: malformed YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), list) or not doc["tables"]:
        raise EaqError(f"{p}: needs a non-empty list 'tables'")
    tables = []
    for i, t in enumerate(doc["tables"]):
        where = f"{p}: tables[{i}]"
        if not isinstance(t, dict) or not {"title", "models", "rows"} <= set(t):
            raise EaqError(f"{where} needs 'title', 'models' and 'rows'")
        rows = []
        for j, r in enumerate(t["rows"]):
            try:
                rows.append(
                    PublishedRow(
                        config=str(r["config"]),
                        label=str(r.get("label", r["config"])),
                        top1=float(r["top1"]),
                        relative_energy=float(r["relative_energy"]),
                        layers={int(k): int(v) for k, v in r["layers"].items()}
                        if "layers" in r
                        else None,
                    )
                )
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise EaqError(
                    f"{where}.rows[{j}]: needs config, top1 and relative_energy "
                    f"(numbers) and optional layers {{bits: count}}; got {r!r} ({e})"
                ) from None
        notes = {str(k): " ".join(str(v).split()) for k, v in (t.get("notes") or {}).items()}
        tables.append(PublishedTable(str(t["title"]), tuple(t["models"]), tuple(rows), notes))
    return Published(str(doc.get("source", p.name)), tuple(tables))


def compare(summary: list[dict], published: Published) -> list[dict]:
    """One record per published table: its rows with each model's measured values.

    Each row: ``config``, ``label``, the paper's ``top1``, ``delta`` (to its FP32 row) and
    ``relative_energy``, ``note``, and ``measured``: per model of the table its ``top1``,
    ``delta`` and ``relative_energy`` (means over seeds), or None where the study has no such row.
    """
    by_key = {(r["model"], r["config"]): r for r in summary}
    out = []
    for t in published.tables:
        fp32 = next((r.top1 for r in t.rows if r.config == "FP32"), None)
        rows = []
        for r in t.rows:
            measured = {}
            for m in t.models:
                s = by_key.get((m, r.config))
                measured[m] = (
                    None
                    if s is None
                    else {
                        "top1": s["top1_mean"],
                        "delta": s["delta_top1"],
                        "relative_energy": s["relative_energy"],
                        "bits": s["bits"],
                        "n_seeds": s["n_seeds"],
                    }
                )
            rows.append(
                {
                    "config": r.config,
                    "label": r.label,
                    "top1": r.top1,
                    "delta": None if fp32 is None or r.config == "FP32" else r.top1 - fp32,
                    "relative_energy": r.relative_energy,
                    "layers": r.layers,
                    "note": t.notes.get(r.config, ""),
                    "measured": measured,
                }
            )
        out.append({"title": t.title, "models": list(t.models), "rows": rows})
    return out


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def comparison_table(record: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Markdown-ready headers and rows of one :func:`compare` record, and its notes: the last
    column refers to them as ``[n]``, each distinct note once."""
    headers = ["Config", "seed top-1", "seed Δ", "seed energy"]
    for m in record["models"]:
        headers += [f"{m} top-1", f"{m} Δ", f"{m} energy"]
    headers.append("why they differ")
    rows, notes = [], []
    for r in record["rows"]:
        cells = [r["label"], f"{r['top1']:.2f}", _num(r["delta"], "+.2f")]
        cells.append(f"{r['relative_energy']:.3f}")
        for m in record["models"]:
            got = r["measured"][m]
            if got is None:
                cells += ["not run", "—", "—"]
                continue
            delta = None if r["config"] == "FP32" else got["delta"]
            cells += [f"{got['top1']:.2f}", _num(delta, "+.2f"), f"{got['relative_energy']:.3f}"]
        if r["note"] and r["note"] not in notes:
            notes.append(r["note"])
        cells.append(f"[{notes.index(r['note']) + 1}]" if r["note"] else "")
        rows.append(cells)
    return headers, rows, notes


def notes_md(notes: list[str]) -> str:
    """The notes of :func:`comparison_table` as Markdown lines ``[n] text``."""
    return "\n".join(f"[{i}] {n}  " for i, n in enumerate(notes, 1)).rstrip()


def layers_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The seed's Table 3 (layers per width of its mixed configuration) beside eaq's."""
    headers = ["Model", "4-bit layers", "6-bit layers", "8-bit layers", "source"]
    rows = []
    for rec in records:
        for r in rec["rows"]:
            if not r["layers"]:
                continue
            rows.append([rec["title"], *_counts(r["layers"]), "seed (published)"])
            for m, got in r["measured"].items():
                if got is not None:
                    bits = {int(k): v for k, v in got["bits"].items() if k != "fp"}
                    rows.append([m, *_counts(bits), f"eaq {r['config']} (measured)"])
    return headers, rows


def _counts(layers: dict[int, float]) -> list[str]:
    total = sum(layers.values()) or 1
    return [f"{layers.get(b, 0):g} ({100 * layers.get(b, 0) / total:.1f}%)" for b in (4, 6, 8)]
