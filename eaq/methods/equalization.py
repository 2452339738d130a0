"""Cross-layer equalization and high-bias absorption (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019, Sec. 4.1 and 4.3).

Two convolutions in a row, ``conv2(relu(conv1(x)))``, compute the same function when output
channel ``i`` of ``conv1`` is divided by ``s_i > 0`` and input channel ``i`` of ``conv2`` is
multiplied by it, because ReLU is positively homogeneous. Choosing

    s_i = sqrt(r1_i / r2_i)      (r1_i: max |W1[i]|, r2_i: max |W2[:, i]|)

makes both ranges ``sqrt(r1_i * r2_i)``: the channels whose weights were far smaller than the
layer's largest lose less to a per-tensor grid, which is what breaks depthwise-separable
networks below 8 bits. Chains (a depthwise conv is the second layer of one pair and the first of
the next) are equalized in rounds until the scales settle.

Equalization can leave large biases; high-bias absorption moves ``c_i = max(0, beta_i - 3
gamma_i)`` (the BatchNorm's shift and scale after ``conv1``, so that the pre-activation is
almost always above ``c_i``) from ``conv1``'s bias into ``conv2``'s: ``b1 -= c`` and
``b2 += sum_{kernel} W2[:, i] * c_i``. It is exact wherever the pre-activation is at least
``c_i``.

Pairs are found on the model's graph (``torch.fx``): ``conv1``'s output reaches only ``conv2``'s
input, through ReLU (``nn.ReLU``; ReLU6 is replaced by ReLU first, as the paper does) or nothing,
with BatchNorms folded first. The method ``cle`` runs all of it and then another method
(``then``, plain PTQ by default), so equalization is a step other methods start from.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.folding import find_conv_bn_pairs, fold_batchnorm_, module_calls
from eaq.methods.registry import (
    Batches,
    check_method_options,
    get_method,
    register_method,
    run_then,
)
from eaq.nn import QuantSummary
from eaq.plan import Plan

__all__ = ["absorb_high_bias_", "equalization_pairs", "equalize_", "replace_relu6_"]

log = logging.getLogger(__name__)
_RELU_FUNCTIONS = {F.relu, torch.relu}


def replace_relu6_(model: nn.Module) -> list[str]:
    """Replace every ``nn.ReLU6`` by ``nn.ReLU`` in place (it is not positively homogeneous)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)]
    for name in names:
        model.set_submodule(name, nn.ReLU(inplace=model.get_submodule(name).inplace))
    return names


def equalization_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv1, conv2)`` pairs whose output-to-input path is only ReLU or nothing (or an
    ``nn.Identity``: a folded BatchNorm).

    ``conv1``'s output channels must be ``conv2``'s input channels: ``conv2`` a plain conv with
    ``groups == 1`` or a depthwise conv (``groups == in_channels == out_channels``).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - the model's, not ours
        raise EaqError(
            f"cross-layer equalization needs a model torch.fx can trace ({type(e).__name__})"
        ) from None
    modules = dict(model.named_modules())

    def conv(node) -> nn.Conv2d | None:
        if node.op == "call_module" and type(modules[node.target]) is nn.Conv2d:
            return modules[node.target]
        return None

    def passes(node) -> bool:  # a ReLU, or a folded BatchNorm's Identity
        if node.op == "call_module":
            return isinstance(modules[node.target], (nn.ReLU, nn.Identity))
        return node.op == "call_function" and node.target in _RELU_FUNCTIONS

    calls = module_calls(graph)
    pairs = []
    for node in graph.nodes:
        first = conv(node)
        if first is None or calls[node.target] != 1:
            continue
        user = node
        while len(user.users) == 1:
            (user,) = user.users
            if passes(user):
                continue
            second = conv(user)
            if (
                second is not None
                and calls[user.target] == 1
                and user.args[0] is not None
                and second.in_channels == first.out_channels
                and (second.groups == 1 or second.groups == second.in_channels)
                and (first.groups == 1 or first.groups == first.out_channels)
            ):
                pairs.append((node.target, user.target))
            break
    return pairs


def _out_range(conv: nn.Conv2d) -> Tensor:
    return conv.weight.detach().abs().flatten(1).amax(1)


def _in_range(conv: nn.Conv2d) -> Tensor:
    w = conv.weight.detach().abs()
    if conv.groups > 1:  # depthwise: input channel i is output channel i
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


def _scale_in_(conv: nn.Conv2d, s: Tensor) -> None:
    if conv.groups > 1:
        conv.weight.mul_(s.reshape(-1, 1, 1, 1))
    else:
        conv.weight.mul_(s.reshape(1, -1, 1, 1))


@torch.no_grad()
def equalize_(
    model: nn.Module, pairs: list[tuple[str, str]], *, rounds: int = 20, tol: float = 1e-6
) -> list[Tensor]:
    """Equalize each pair in rounds until no scale moves by more than ``tol``; in place.

    A depthwise conv is the second layer of one pair and the first of the next (its channel
    ``i`` in is its channel ``i`` out); the rounds balance both. Returns the total scale per
    pair (``conv1``'s output channel ``i`` was divided by it).
    """
    totals = [torch.ones(model.get_submodule(a).out_channels) for a, _ in pairs]
    for _ in range(rounds):
        moved = 0.0
        for k, (a, b) in enumerate(pairs):
            first, second = model.get_submodule(a), model.get_submodule(b)
            r1, r2 = _out_range(first), _in_range(second)
            s = torch.sqrt(r1 / r2.clamp(min=1e-12))
            s = torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))
            first.weight.div_(s.reshape(-1, 1, 1, 1))
            if first.bias is not None:
                first.bias.div_(s)
            _scale_in_(second, s)
            totals[k] *= s
            moved = max(moved, float((s - 1).abs().max()))
        if moved < tol:
            break
    return totals


@torch.no_grad()
def absorb_high_bias_(
    model: nn.Module,
    pairs: list[tuple[str, str]],
    bn_stats: dict[str, tuple[Tensor, Tensor]],
    scales: list[Tensor],
) -> int:
    """Move ``max(0, beta - 3 gamma)`` of each pair's ``conv1`` bias into ``conv2``; in place.

    ``bn_stats`` holds each ``conv1``'s BatchNorm ``(beta, gamma)`` before folding; they are
    divided by the pair's equalization scale. Only pairs joined by a ReLU are absorbed (with
    nothing between, the shift is already linear and gains nothing). Returns how many pairs
    absorbed something.
    """
    n = 0
    for (a, b), s in zip(pairs, scales, strict=True):
        if a not in bn_stats:
            continue
        first, second = model.get_submodule(a), model.get_submodule(b)
        beta, gamma = bn_stats[a]
        c = (beta / s - 3 * gamma.abs() / s).clamp(min=0)
        if not bool((c > 0).any()) or first.bias is None:
            continue
        first.bias.sub_(c)
        w = second.weight
        if second.groups > 1:
            shift = w.flatten(1).sum(1) * c
        else:
            shift = (w.sum(dim=(2, 3)) * c.reshape(1, -1)).sum(1)
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(second.out_channels, dtype=w.dtype))
        second.bias.add_(shift)
        n += 1
    return n


def _relu_between(model: nn.Module, pairs) -> list[tuple[str, str]]:
    """The pairs whose path holds a ReLU (high-bias absorption needs one)."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    out = []
    for a, b in pairs:
        node, seen = nodes[a], False
        while node.target != b:
            (node,) = node.users
            seen |= (
                node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)
            ) or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
        if seen:
            out.append((a, b))
    return out


def _check(*, rounds: int, absorb_bias: bool, relu6_to_relu: bool, then: str) -> None:
    if rounds < 1:
        raise EaqError(f"rounds must be >= 1, got {rounds}")
    if then == "cle":
        raise EaqError("then must name another method than cle")
    get_method(then)
    check_method_options(then, {})


def _no_pairs_error() -> EaqError:
    return EaqError(
        "cle found no pair of convolutions joined by a ReLU or nothing; it has nothing to "
        "equalize in this model (pick another method)"
    )


def _check_model(model: nn.Module) -> None:
    probe = copy.deepcopy(model)
    replace_relu6_(probe)
    fold_batchnorm_(probe)
    if not equalization_pairs(probe):
        raise _no_pairs_error()


@register_method(
    "cle",
    "cross-layer equalization + high-bias absorption (DFQ, Nagel et al. 2019), then a method",
    check=_check,
    check_model=_check_model,
)
def cle(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    rounds: int = 20,
    absorb_bias: bool = True,
    relu6_to_relu: bool = True,
    then: str = "ptq",
    then_options: dict | None = None,
) -> QuantSummary:
    if relu6_to_relu:
        replaced = replace_relu6_(model)
        if replaced:
            log.info(f"cle: {len(replaced)} ReLU6 replaced by ReLU")
    bn_stats = {}  # the folded conv's output per channel: mean ~ BN bias, std ~ |BN weight|
    for conv_name, bn_name in find_conv_bn_pairs(model):
        bn = model.get_submodule(bn_name)
        if bn.affine:
            bn_stats[conv_name] = (bn.bias.detach().clone(), bn.weight.detach().clone())
    fold_batchnorm_(model)
    pairs = equalization_pairs(model)
    if not pairs:
        raise _no_pairs_error()
    scales = equalize_(model, pairs, rounds=rounds)
    absorbed = 0
    if absorb_bias:
        scale_of = dict(zip(pairs, scales, strict=True))
        with_relu = _relu_between(model, pairs)
        absorbed = absorb_high_bias_(model, with_relu, bn_stats, [scale_of[p] for p in with_relu])
    log.info(f"cle: {len(pairs)} pairs equalized, high bias absorbed in {absorbed}")
    return run_then(then, model, plan, calib, then_options)
