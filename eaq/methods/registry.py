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
from eaq.quant import ObserverCache
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
        needs: what the plan must quantize somewhere for the method to do anything beyond
            plain PTQ: ``"weights"`` (a method that chooses weight roundings) and/or
            ``"activations"`` (one that moves activation ranges). A plan without it is an
            error, never a silent plain PTQ.
        check_model: ``check_model(model)`` raises :class:`EaqError` where the method has
            nothing to work on in ``model`` (SmoothQuant without LayerNorm -> Linear pairs,
            say); None when it applies to any model.
    """

    name: str
    summary: str
    fn: MethodFn
    options: dict
    check: Callable[..., None] | None = None
    needs: tuple[str, ...] = ()
    check_model: Callable[[nn.Module], None] | None = None


METHODS: Registry[Method] = Registry("method")

THEN_OPTIONS = "then_options"
"""The option of a method with a ``then`` option that holds the options of the ``then`` method
(``{then: qdrop, then_options: {iters: 2000}}``); checked against that method's options."""


def register_method(
    name: str,
    summary: str,
    *,
    check: Callable[..., None] | None = None,
    needs: tuple[str, ...] = (),
    check_model: Callable[[nn.Module], None] | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as method ``name``; ``summary`` is its one line in ``eaq methods``.

    ``check(**options)``, when given, validates the option values; ``needs`` names what the
    plan must quantize and ``check_model`` what the model must hold (see :class:`Method`).
    """
    unknown = set(needs) - {"weights", "activations"}
    if unknown:
        raise ValueError(f"needs takes 'weights' and 'activations', got {sorted(unknown)}")

    def wrap(fn: MethodFn) -> MethodFn:
        params = inspect.signature(fn).parameters.values()
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        METHODS.add(name, Method(name, summary, fn, options, check, tuple(needs), check_model))
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
            values = {**method.options, **options}
            values.pop(THEN_OPTIONS, None)
            method.check(**values)
        except EaqError as e:
            raise EaqError(f"method {name!r}: {e}") from None
    if options.get(THEN_OPTIONS) is not None:
        sub = options[THEN_OPTIONS]
        then = {**method.options, **options}["then"]
        if not isinstance(sub, dict):
            raise EaqError(
                f"method {name!r} option {THEN_OPTIONS!r} must be a mapping of {then!r}'s "
                f"options, e.g. {{iters: 2000}}, got {sub!r}"
            )
        try:
            options[THEN_OPTIONS] = check_method_options(then, sub)
        except EaqError as e:
            raise EaqError(f"method {name!r} option {THEN_OPTIONS!r}: {e}") from None
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
    check_method_applies(method, model, plan, options)
    return get_method(method).fn(model, plan, calib, **options)


def check_method_applies(
    name: str, model: nn.Module, plan: Plan, options: dict | None = None
) -> None:
    """Raise :class:`EaqError` where method ``name`` has nothing to work on: ``plan``
    quantizes nothing it changes (GPTQ with every weight left in float, say) or ``model``
    lacks what it needs (SmoothQuant on a CNN). A method that hands over to another (its
    ``then`` option) is checked with that one too. Cheap: run it before any calibration."""
    for method in method_chain(name, options):
        check_method_plan(method, plan)
        check_method_model(method, model)


def method_chain(name: str, options: dict | None = None) -> list[str]:
    """``name`` followed by the methods it hands over to through a ``then`` option:
    ``["cle", "qdrop"]`` for cle with ``then="qdrop"``."""
    chain = [name]
    options = {**get_method(name).options, **(options or {})}
    then = options.get("then")
    while then is not None and then not in chain:
        chain.append(then)
        options = {**get_method(then).options, **(options.get(THEN_OPTIONS) or {})}
        then = options.get("then")
    return chain


def run_then(then: str, model: nn.Module, plan: Plan, calib: Batches, options: dict | None):
    """Hand over to method ``then`` with its ``options`` (a method's ``then_options``)."""
    return get_method(then).fn(model, plan, calib, **(options or {}))


def check_method_model(name: str, model: nn.Module) -> None:
    """Raise :class:`EaqError` if ``model`` lacks what method ``name`` works on."""
    method = get_method(name)
    if method.check_model is not None:
        method.check_model(model)


def check_method_plan(name: str, plan: Plan) -> None:
    """Raise :class:`EaqError` if ``plan`` quantizes nothing that method ``name`` changes."""
    for what in get_method(name).needs:
        width = "w_bits" if what == "weights" else "a_bits"
        if not plan.sets(width):
            raise EaqError(
                f"method {name!r} works on quantized {what} and this plan quantizes none "
                f"({width} is unset everywhere); give {width} or use method 'ptq'"
            )


def check_shared_observers(method: str, observers: ObserverCache | None) -> None:
    """Shared calibration passes (``observers``) hold plain PTQ's float observations: an
    error with any other method."""
    if observers is not None and method != "ptq":
        raise EaqError(f"reusing calibration passes is for method 'ptq', not {method!r}")


def plain_ptq_(
    model: nn.Module, plan: Plan, calib: Batches, observers: ObserverCache | None = None
) -> QuantSummary:
    """Plain PTQ: apply ``plan`` and calibrate every quantizer on ``calib``. ``observers``
    reuses the calibration passes of earlier plans of the same float model on the same
    batches (:class:`~eaq.quant.ObserverCache`; the values are the same)."""
    summary = quantize_(model, plan)
    calibrate_(model, calib, cache=observers)
    return summary


@register_method(
    "ptq", "plain PTQ: observers calibrate each quantizer on float activations (the seed's)"
)
def _ptq(model: nn.Module, plan: Plan, calib: Batches) -> QuantSummary:
    return plain_ptq_(model, plan, calib)
