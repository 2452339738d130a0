"""Trained checkpoints kept in the project: fp16 safetensors plus a manifest entry."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save
from torch import nn

from eaq.provenance import sha256

MANIFEST = "manifest.json"


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


def read_manifest(folder: Path) -> dict[str, dict]:
    """The entries of ``folder/manifest.json`` by model name ({} when there is none)."""
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def manifest_entry(weights: Path, digest: str) -> dict | None:
    """The manifest entry beside ``weights`` whose sha256 is ``digest``, or None."""
    return next(
        (e for e in read_manifest(weights.parent).values() if e.get("sha256") == digest), None
    )


def update_manifest(folder: Path, entry: dict) -> None:
    """Add or replace the manifest entry of ``entry['model']`` in ``folder/manifest.json``."""
    path = folder / MANIFEST
    entries = read_manifest(folder)
    entries[entry["model"]] = entry
    path.write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")
