"""Where eaq finds the project and its data."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "EAQ_DATA_ROOT"


def repo_root() -> Path:
    """The folder holding ``pyproject.toml``: the parent of the ``eaq`` package."""
    return Path(__file__).resolve().parent.parent


def default_data_root() -> Path:
    """``$EAQ_DATA_ROOT`` if set, else ``~/.cache/eaq/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "eaq" / "data"


def resolve_data_root(arg: str | Path | None) -> Path:
    """The ``--data-root`` argument if given, else :func:`default_data_root`."""
    if arg is None or str(arg) == "":
        return default_data_root()
    return Path(arg).expanduser()
