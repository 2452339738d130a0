"""Every reconstruction-method test runs single-threaded (``one_thread``, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_threaded(one_thread):
    yield
