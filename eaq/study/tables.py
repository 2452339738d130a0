"""Result tables in Markdown documents, written from stored rows (``eaq tables``).

A document marks each generated table with a pair of comments; everything between them is
rewritten by :func:`update_document` and compared by :func:`check_documents`::

    <!-- eaq-table kind=summary rows=results/seed-cifar100.json -->
    | Config | ... |
    <!-- /eaq-table -->

Kinds and their options (paths are relative to the repository root):

- ``summary`` (``rows``, optional ``configs=A,B,...``): one line per configuration, one column
  per model, each cell "top-1 % (relative energy)".
- ``model`` (``rows``, ``model``): every configuration of one model, as in the study's report.
- ``published`` (``rows``, ``published``): a published-results file
  (:mod:`eaq.study.published`) beside the measured rows, one table per published table.
- ``energy`` (no rows: computed): relative energy with every layer at 8/6/4 bits for the seed's
  ResNet-18 and for DeiT-Tiny counted per token and the seed's way.

A rows file (``results/NAME.json``) holds a study's rows as :func:`import_rows` copied them
from its store: the rows, the study config and its fingerprint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from eaq.errors import EaqError
from eaq.study.published import (
    compare,
    comparison_table,
    layers_table,
    load_published,
    notes_md,
)
from eaq.study.report import main_table, summarize, table_md
from eaq.study.store import RESULT_COLUMNS, Store

BLOCK = re.compile(r"(<!-- eaq-table ([^>]*?) -->\n)(.*?)(<!-- /eaq-table -->)", re.S)
KINDS = {
    "summary": ({"rows"}, {"configs"}),
    "model": ({"rows", "model"}, set()),
    "published": ({"rows", "published"}, set()),
    "energy": (set(), set()),
}


def import_rows(folder: str | Path, dest: str | Path, *, store_url: str | None = None) -> Path:
    """Copy a study's rows (with their timings and provenance), config and fingerprint from
    its store to the rows file ``dest``."""
    with Store.open(Path(folder), url=store_url) as store:
        rows = store.results()
        config = json.loads(store.get_meta("config") or "{}")
        fingerprint = store.get_meta("fingerprint")
    if not rows:
        raise EaqError(f"{folder}: the study has no rows to import")
    rows.sort(key=lambda r: (r["model"], r["config"], r["seed"]))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    doc = {"study": config, "fingerprint": fingerprint, "rows": rows}
    dest.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return dest


def load_rows(path: str | Path) -> list[dict]:
    return _load_rows_file(path)["rows"]


def study_rows(path: str | Path, fingerprint: str) -> list[dict]:
    """The rows of the rows file ``path``, checked to be those of the study ``fingerprint``."""
    doc = _load_rows_file(path)
    if doc.get("fingerprint") != fingerprint:
        raise EaqError(
            f"{path} holds the rows of another study (fingerprint {doc.get('fingerprint')}, "
            f"this one {fingerprint}); the study file, --seeds and --limit must be those that "
            "wrote it"
        )
    rows, keys = doc["rows"], set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(RESULT_COLUMNS):
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise EaqError(
                f"{path}: row {i} is not a result row of this eaq (columns {have}; valid: "
                f"{', '.join(RESULT_COLUMNS)})"
            )
        key = (row["model"], row["config"], row["seed"])
        if key in keys:
            model, config, seed = key
            raise EaqError(f"{path}: row {i} repeats model {model}, config {config}, seed {seed}")
        keys.add(key)
    return rows


def _load_rows_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EaqError(
            f"rows file not found: {p} (write it with `eaq tables --import STUDY_FOLDER`)"
        )
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EaqError(f"{p}: not a rows file written by `eaq tables --import` ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise EaqError(f"{p}: not a rows file written by `eaq tables --import` (no list 'rows')")
    return doc


@dataclass(frozen=True)
class Block:
    options: dict[str, str]
    text: str


def _options(spec: str, where: str) -> dict[str, str]:
    opts = {}
    for item in spec.split():
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise EaqError(f"{where}: table option {item!r} is not key=value")
        opts[key] = value
    kind = opts.get("kind")
    if kind not in KINDS:
        raise EaqError(f"{where}: table kind {kind!r}; valid: {', '.join(KINDS)}")
    need, optional = KINDS[kind]
    missing = need - set(opts)
    extra = set(opts) - need - optional - {"kind"}
    if missing or extra:
        raise EaqError(
            f"{where}: a {kind} table needs {sorted(need) or 'no options'}"
            + (f" and may have {sorted(optional)}" if optional else "")
            + f"; got {sorted(set(opts) - {'kind'})}"
        )
    return opts


def render(options: dict[str, str], root: Path) -> str:
    """The Markdown of one table block (without its markers)."""
    kind = options["kind"]
    if kind == "energy":
        return _energy_table()
    rows = load_rows(root / options["rows"])
    summary = summarize(rows)
    if kind == "summary":
        configs = options["configs"].split(",") if "configs" in options else None
        return _summary_table(summary, configs)
    if kind == "model":
        ms = [r for r in summary if r["model"] == options["model"]]
        if not ms:
            have = sorted({r["model"] for r in summary})
            raise EaqError(f"model {options['model']!r} has no rows in {options['rows']}: {have}")
        return table_md(*main_table(ms))
    records = compare(summary, load_published(root / options["published"]))
    parts = []
    for rec in records:
        h, t, notes = comparison_table(rec)
        parts += [f"**{rec['title']}**", "", table_md(h, t), ""]
        parts += [notes_md(notes), ""] if notes else []
    h, t = layers_table(records)
    if t:
        parts += ["**Table 3: layers per width of the mixed configuration**", "", table_md(h, t)]
    return "\n".join(parts).rstrip("\n")


def _summary_table(summary: list[dict], configs: list[str] | None) -> str:
    models = sorted({r["model"] for r in summary})
    by_key = {(r["model"], r["config"]): r for r in summary}
    if configs is None:
        configs = list(dict.fromkeys(r["config"] for r in summary))
    rows = []
    for c in configs:
        if not any((m, c) in by_key for m in models):
            raise EaqError(f"configuration {c!r} has no rows (models: {', '.join(models)})")
        cells = [c]
        for m in models:
            r = by_key.get((m, c))
            cells.append("—" if r is None else f"{r['top1_mean']:.2f} ({r['relative_energy']:.3f})")
        rows.append(cells)
    return table_md(["Config", *models], rows)


def _energy_table() -> str:
    from eaq.energy import collect_stats, plan_energy, seed_miscount
    from eaq.models import create_model
    from eaq.plan import Plan

    def rel(stats, b):
        plan = Plan.uniform(b, b, first_last_8bit=False)
        return f"{plan_energy(stats, plan, 'seed').relative_energy:.3f}"

    r18 = create_model("resnet18", num_classes=100, input_size=32, weights="random")
    deit = create_model("deit_tiny", num_classes=1000, input_size=224, weights="random")
    deit_stats = collect_stats(deit, 224)
    cases = [
        ("resnet18 @32 (the seed's network)", collect_stats(r18, 32)),
        ("deit_tiny @224, per token with attention matmuls", deit_stats),
        ("deit_tiny @224, the seed's count", seed_miscount(deit_stats, deit)),
    ]
    rows = [[label, *(rel(s, b) for b in (8, 6, 4))] for label, s in cases]
    return table_md(["Model (seed profile)", "8 bit", "6 bit", "4 bit"], rows)


def update_document(path: str | Path, root: str | Path) -> tuple[str, str]:
    """The document's text as it is and with every table block regenerated.

    Raises:
        EaqError: a block has a bad kind or options, or names a missing file, model or config.
    """
    path, root = Path(path), Path(root)
    old = path.read_text()
    cache: dict[str, str] = {}

    def fill(m: re.Match) -> str:
        line = old[: m.start()].count("\n") + 1
        opts = _options(m.group(2), f"{path}:{line}")
        key = json.dumps(opts, sort_keys=True)
        if key not in cache:
            cache[key] = render(opts, root)
        return f"{m.group(1)}{cache[key]}\n{m.group(4)}"

    return old, BLOCK.sub(fill, old)


def documents(root: str | Path) -> list[Path]:
    """The Markdown files under ``root`` (README.md and docs/) that hold table blocks."""
    root = Path(root)
    candidates = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in candidates if p.is_file() and BLOCK.search(p.read_text())]


def _stale(root: str | Path) -> list[tuple[Path, str]]:
    """Each document whose tables differ from what their rows give, with its regenerated text."""
    out = []
    for p in documents(root):
        old, new = update_document(p, root)
        if new != old:
            out.append((p, new))
    return out


def check_documents(root: str | Path) -> list[Path]:
    """The documents whose committed tables differ from what their rows give."""
    return [p for p, _ in _stale(root)]


def write_documents(root: str | Path) -> list[Path]:
    """Regenerate every table block; returns the documents that changed."""
    stale = _stale(root)
    for p, new in stale:
        p.write_text(new)
    return [p for p, _ in stale]
