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

from eaq.errors import EaqError


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


@torch.no_grad()
def layer_calls(
    model: nn.Module, name: str, images: Iterable[torch.Tensor], *, with_output: bool = False
) -> list[tuple[tuple, torch.Tensor | None]]:
    """Run ``model`` on each batch of ``images`` and keep what submodule ``name`` received.

    One ``(args, output)`` pair per batch: ``args`` the layer's positional inputs (copies), and
    ``output`` its output with ``with_output`` (else ``None``). Each pass stops at the layer.
    A layer called with keyword arguments, or never reached, is an error.
    """
    layer = model.get_submodule(name)
    calls: list[tuple[tuple, torch.Tensor | None]] = []

    def pre(_m, args, kwargs):
        if kwargs:
            raise EaqError(f"layer {name} is called with keyword arguments; cannot replay it")
        calls.append((tuple(a.clone() if torch.is_tensor(a) else a for a in args), None))
        if not with_output:
            raise StopForward

    def post(_m, _args, out):
        calls[-1] = (calls[-1][0], out.clone())
        raise StopForward

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True)]
    if with_output:
        handles.append(layer.register_forward_hook(post))
    n_batches = 0
    try:
        for x in images:
            n_batches += 1
            forward_until_stopped(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if len(calls) != n_batches:
        raise EaqError(f"the forward pass never reached layer {name}")
    return calls
