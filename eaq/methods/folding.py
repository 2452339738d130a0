"""BatchNorm folding: merge each ``Conv2d -> BatchNorm2d`` pair into the convolution.

In eval mode ``bn(conv(x)) = conv'(x)`` with, per output channel ``c``,
``w'[c] = w[c] * g[c]`` and ``b'[c] = (b[c] - mean[c]) * g[c] + beta[c]``,
``g = gamma / sqrt(running_var + eps)``. The BatchNorm becomes ``nn.Identity`` (same module
path, so plans and names are unchanged). Every CNN method folds first, so the quantizers see the
weights the deployed integer kernel would use.

Which pairs fold (the rule, :func:`find_conv_bn_pairs`):

1. Graph rule, when ``torch.fx.symbolic_trace`` traces the model: a ``BatchNorm2d`` call whose
   only input is the output of a ``Conv2d`` call, where the conv's output has no other user and
   each module is called exactly once.
2. Otherwise the naming rule: in one parent module, siblings ``convN`` / ``bnN`` (same suffix,
   torchvision and eaq ResNets), and inside an ``nn.Sequential`` a ``Conv2d`` directly followed
   by a ``BatchNorm2d`` (torchvision's ``downsample.0`` / ``downsample.1``).

Channel counts must match and the BatchNorm must track running statistics, else the pair is
skipped.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from eaq.errors import EaqError
from eaq.methods.registry import Batches, get_method, register_method
from eaq.nn import QuantAttention, QuantConv2d, QuantLinear, QuantMatMul, QuantSummary
from eaq.plan import Plan

__all__ = ["find_conv_bn_pairs", "fold_batchnorm_", "fold_conv_bn_"]

QUANT_LEAVES = (QuantConv2d, QuantLinear, QuantMatMul, QuantAttention)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) in (nn.Conv2d, QuantConv2d)
        and type(bn) is nn.BatchNorm2d
        and bn.num_features == conv.out_channels
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def module_calls(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times the traced forward calls each module (by name)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


class QuantLeafTracer(torch.fx.Tracer):
    """fx's tracer, with eaq's quantized layers as leaves (a conv stays one call)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANT_LEAVES) or super().is_leaf_module(m, qualname)


def _pairs_by_graph(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        graph = QuantLeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use the naming rule
        return None
    modules = dict(model.named_modules())
    calls = module_calls(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if _foldable(modules[src.target], modules[node.target]):
            pairs.append((src.target, node.target))
    return pairs


_CONV_NAME = re.compile(r"conv(\d*)")


def _pairs_by_name(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = dict(parent.named_children())
        for name, child in children.items():
            m = _CONV_NAME.fullmatch(name)
            bn = children.get(f"bn{m.group(1)}") if m else None
            if bn is not None and _foldable(child, bn):
                pairs.append((prefix + name, f"{prefix}bn{m.group(1)}"))
        if isinstance(parent, nn.Sequential):
            items = list(children.items())
            for (a_name, a), (b_name, b) in zip(items, items[1:], strict=False):
                if _foldable(a, b):
                    pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs to fold, by the graph rule or else the naming rule."""
    pairs = _pairs_by_graph(model)
    return _pairs_by_name(model) if pairs is None else pairs


@torch.no_grad()
def fold_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv``'s weight and bias, in place."""
    g = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = g / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every Conv2d+BatchNorm2d pair of ``model`` in place; return the folded pairs.

    Each folded BatchNorm is replaced by ``nn.Identity``. The model computes what it computed
    in eval mode before (to float rounding).

    Examples:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> fold_batchnorm_(m)
        [('0', '1')]
        >>> type(m[1]).__name__
        'Identity'
    """
    if any(isinstance(m, QuantConv2d) for m in model.modules()):
        raise ValueError("fold BatchNorm before quantizing: the quantizers saw unfolded weights")
    pairs = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        fold_conv_bn_(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    return pairs


def _check_bnfold(model: nn.Module) -> None:
    if not find_conv_bn_pairs(model):
        raise EaqError(
            "bnfold found no convolution followed by a BatchNorm in this model: it would be "
            "plain PTQ; use method 'ptq'"
        )


@register_method(
    "bnfold",
    "fold BatchNorm into the preceding conv, then plain PTQ",
    check_model=_check_bnfold,
)
def bnfold(model: nn.Module, plan: Plan, calib: Batches) -> QuantSummary:
    fold_batchnorm_(model)
    return get_method("ptq").fn(model, plan, calib)
