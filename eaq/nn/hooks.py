"""Temporary forward hooks: the one way eaq looks inside a model during a pass.

Calibration-time statistics (bias correction, SmoothQuant, GPTQ, sensitivity, AdaRound) all
register hooks for one or more passes over calibration data and must remove them afterwards,
also when a pass fails; :func:`hooks_on` does that. A hook that has what it needs can raise
:class:`StopForward` to cut the pass short; :func:`forward_until_stopped` runs such a pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (see :func:`forward_until_stopped`)."""


@contextlib.contextmanager
def hooks_on(pairs: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False) -> Iterator[None]:
    """Register each ``(module, hook)`` for the block (forward-pre hooks with ``pre``)."""
    handles = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_until_stopped(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model(x)``, ending quietly where a hook raises :class:`StopForward`."""
    try:
        model(x)
    except StopForward:
        pass
