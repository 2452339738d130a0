"""Trained checkpoints kept in the project: fp16 safetensors plus a manifest entry.

A folder's ``manifest.json`` holds two tables, each record exactly once::

    {"models": {model name: entry of its current file},
     "earlier": {sha256: entry of a file no longer current, or of one a current file started
                 from or was distilled from}}

An entry's ``init`` and ``teacher`` name a file by ``file`` and ``sha256`` only; its own entry
is under that sha256 in ``models`` or ``earlier``, so a chain of warm restarts is stored once
however many entries refer to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save
from torch import nn

from eaq.provenance import sha256

MANIFEST = "manifest.json"
PARENTS = ("init", "teacher")  # the entry fields that name another file by sha256


def save_fp16(model: nn.Module, path: Path) -> str:
    """Save the state dict with floating tensors in fp16; return the file's sha256."""
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # written by Python, not by safetensors' save_file, which creates the file owner-only
    # (0600) whatever the umask: an export to a shared folder must be readable there
    path.write_bytes(save(state))
    return sha256(path)


def load_manifest(folder: Path) -> dict[str, dict]:
    """``folder/manifest.json`` as ``{"models": ..., "earlier": ...}`` (both empty when there is
    none). A manifest written before the two tables, one entry per model with the entries it
    started from nested under ``init``/``teacher`` ``manifest``, is read into them."""
    path = folder / MANIFEST
    data = json.loads(path.read_text()) if path.exists() else {"models": {}, "earlier": {}}
    if "models" in data:
        return data
    earlier: dict[str, dict] = {}
    models = {name: _unnest(entry, earlier) for name, entry in data.items()}
    return {"models": models, "earlier": _without(earlier, models)}


def read_manifest(folder: Path) -> dict[str, dict]:
    """The current entries of ``folder/manifest.json`` by model name ({} when there is none)."""
    return load_manifest(folder)["models"]


def ancestry(weights: Path, digest: str) -> dict[str, dict]:
    """The manifest entries, by sha256, of the file ``digest`` beside ``weights`` and of every
    file it started from or was distilled from, as far as that manifest records them ({}: the
    file has no entry there)."""
    data = load_manifest(weights.parent)
    known = {e["sha256"]: e for e in data["models"].values()} | data["earlier"]
    found: dict[str, dict] = {}
    todo = [digest]
    while todo:
        entry = known.get(todo.pop())
        if entry is None or entry["sha256"] in found:
            continue
        found[entry["sha256"]] = entry
        todo += [entry[k]["sha256"] for k in PARENTS if entry.get(k)]
    return found


def update_manifest(folder: Path, entry: dict, earlier: dict[str, dict] | None = None) -> None:
    """Make ``entry`` the current entry of ``entry['model']`` in ``folder/manifest.json``; the
    entry it replaces and the ``earlier`` entries (by sha256) go into the earlier table."""
    data = load_manifest(folder)
    models, old = data["models"], data["models"].get(entry["model"])
    stored = data["earlier"] | (earlier or {})
    if old is not None:
        stored[old["sha256"]] = old
    models[entry["model"]] = entry
    data = {"models": dict(sorted(models.items())), "earlier": _without(stored, models)}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def _without(earlier: dict[str, dict], models: dict[str, dict]) -> dict[str, dict]:
    """``earlier`` less the current files' entries, ordered by sha256."""
    current = {e["sha256"] for e in models.values()}
    return {k: earlier[k] for k in sorted(earlier) if k not in current}


def _unnest(entry: dict, earlier: dict[str, dict]) -> dict:
    """An entry of the one-table manifest with its nested entries moved into ``earlier``."""
    entry = dict(entry)
    for key in PARENTS:
        if entry.get(key):
            record = dict(entry[key])
            nested = record.pop("manifest", None)
            if nested:
                earlier[nested["sha256"]] = _unnest(nested, earlier)
            entry[key] = record
    return entry
