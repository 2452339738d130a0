"""The method registry and the one entry point, :func:`quantize_model`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eaq.errors import EaqError, choices_hint
from eaq.nn import QuantSummary, calibrate_, quantize_
from eaq.plan import Plan

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
MethodFn = Callable[[nn.Module, Plan, Batches], QuantSummary]


@dataclass(frozen=True)
class Method:
    """A PTQ method: ``fn(model, plan, calib) -> QuantSummary`` quantizes ``model`` in place."""

    name: str
    summary: str
    fn: MethodFn


_METHODS: dict[str, Method] = {}


def register_method(name: str, summary: str) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as method ``name``; ``summary`` is its one line in ``eaq methods``."""

    def wrap(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = Method(name, summary, fn)
        return fn

    return wrap


def method_names() -> list[str]:
    return list(_METHODS)


def list_methods() -> list[Method]:
    return list(_METHODS.values())


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise EaqError(f"unknown method {name!r}; {choices_hint(method_names())}") from None


def quantize_model(
    model: nn.Module, plan: Plan, calib: Batches, method: str = "ptq"
) -> QuantSummary:
    """Quantize ``model`` in place with ``plan`` and the named method; return the summary."""
    return get_method(method).fn(model, plan, calib)


@register_method(
    "ptq", "plain PTQ: observers calibrate each quantizer on float activations (the seed's)"
)
def _plain_ptq(model: nn.Module, plan: Plan, calib: Batches) -> QuantSummary:
    summary = quantize_(model, plan)
    calibrate_(model, calib)
    return summary
