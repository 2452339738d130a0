"""Where a result came from: code version, library versions, seed, file hashes."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

import timm
import torch
import torchvision

import eaq


@functools.cache
def git_commit() -> str:
    """The commit of the eaq checkout (with ``-dirty`` if it has changes), or ``unknown``."""
    root = Path(eaq.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@functools.cache
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: str | Path) -> str:
    """The sha256 of a file (cached per path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime)


def provenance(
    *, seed: int | None = None, files: dict[str, str | Path | None] | None = None
) -> dict:
    """A JSON-ready record of code and library versions, the seed and hashes of ``files``."""
    record = {
        "eaq": eaq.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "seed": seed,
    }
    for key, path in (files or {}).items():
        if path is not None and Path(path).is_file():
            record[f"{key}_sha256"] = sha256(path)
    return record
