"""Fixtures for the reconstruction-method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded: on a shared 2-core machine OpenMP spin-waiting makes these tiny
    optimisation loops many times slower with 2 threads. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
