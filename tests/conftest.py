"""Shared fixtures: where the real data and weights live (``../shared/data`` or $EAQ_DATA_ROOT);
``one_thread`` for tests of small optimisation loops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from eaq.paths import repo_root

RESNET20_FILE = Path("models") / "resnet20_cifar10.th"


def _data_root() -> Path:
    env = os.environ.get("EAQ_DATA_ROOT")
    return Path(env).expanduser() if env else repo_root().parent / "shared" / "data"


def require_file(root: Path, rel: str | Path) -> Path:
    """``root / rel``, or skip the test saying which file is missing."""
    path = root / rel
    if not path.is_file():
        pytest.skip(f"needs {path} (set EAQ_DATA_ROOT to the folder holding {rel})")
    return path


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root: $EAQ_DATA_ROOT if set, else the repo's ../shared/data; skips if absent."""
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"no data root at {root} (set EAQ_DATA_ROOT to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def resnet20_path(data_root: Path) -> Path:
    """The pretrained CIFAR-10 ResNet-20 state-dict file; skips if absent."""
    return require_file(data_root, RESNET20_FILE)


@pytest.fixture
def one_thread():
    """Run single-threaded: on a shared 2-core machine OpenMP spin-waiting makes tiny
    optimisation loops many times slower with 2 threads. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
