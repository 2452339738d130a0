"""The method registry and the one entry point, :func:`quantize_model_`.

A method is ``fn(model, plan, calib, *, option=default, ...) -> QuantSummary``; its keyword-only
arguments are its options (``eaq quantize --method-option iters=500``, ``method_options`` in a
study config), validated by name here so a typo is an error, not a silent default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eaq.errors import EaqError, choices_hint, like_default
from eaq.nn import QuantSummary, calibrate_, quantize_
from eaq.plan import Plan
from eaq.registry import Registry

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
MethodFn = Callable[..., QuantSummary]


@dataclass(frozen=True)
class Method:
    """A PTQ method: ``fn(model, plan, calib, **options) -> QuantSummary`` quantizes in place.

    Attributes:
        options: option name -> default (the function's keyword-only arguments).
        check: ``check(**options)`` raises :class:`EaqError` for values the method cannot
            take (an iteration count of 0, say), so that they fail before any work; None when
            the types are all there is to check.
    """

    name: str
    summary: str
    fn: MethodFn
    options: dict
    check: Callable[..., None] | None = None


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, summary: str, *, check: Callable[..., None] | None = None
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as method ``name``; ``summary`` is its one line in ``eaq methods``.

    ``check(**options)``, when given, validates the option values (see :class:`Method`).
    """

    def wrap(fn: MethodFn) -> MethodFn:
        params = inspect.signature(fn).parameters.values()
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        METHODS.add(name, Method(name, summary, fn, options, check))
        return fn

    return wrap


def method_names() -> list[str]:
    return METHODS.names()


def list_methods() -> list[Method]:
    return METHODS.values()


def get_method(name: str) -> Method:
    return METHODS.get(name)


def check_method_options(name: str, options: dict | None) -> dict:
    """``options`` checked against method ``name``'s option names and default types."""
    method = get_method(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        valid = choices_hint(list(method.options)) if method.options else "it takes none"
        raise EaqError(f"method {name!r} has no option(s) {', '.join(unknown)}; {valid}")
    for key, value in options.items():
        default = method.options[key]
        if not like_default(value, default):
            raise EaqError(
                f"method {name!r} option {key!r} must be like its default {default!r}, "
                f"got {value!r}"
            )
    if method.check is not None:
        try:
            method.check(**{**method.options, **options})
        except EaqError as e:
            raise EaqError(f"method {name!r}: {e}") from None
    return options


def quantize_model_(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    method: str = "ptq",
    options: dict | None = None,
) -> QuantSummary:
    """Quantize ``model`` in place with ``plan`` and the named method; return the summary."""
    options = check_method_options(method, options)
    return get_method(method).fn(model, plan, calib, **options)


@register_method(
    "ptq", "plain PTQ: observers calibrate each quantizer on float activations (the seed's)"
)
def _plain_ptq(model: nn.Module, plan: Plan, calib: Batches) -> QuantSummary:
    summary = quantize_(model, plan)
    calibrate_(model, calib)
    return summary
