"""What every peer module shares: widths, first/last layers, counting what a graph quantized.

A peer module (``peers/<peer>_peer.py``) defines ``PEER`` (its name on the command line),
``PACKAGE`` (the distribution whose version is recorded), ``RECIPES`` (recipe name -> one line),
``unsupported(width, recipe, family) -> str | None`` (why a cell cannot run, or None) and
``quantize(model, calib_batches, width, recipe) -> (model_or_callable, info)`` (the harness
passes only names of ``RECIPES``). ``info`` holds
``quantized_layers`` (int), ``attention_matmuls`` (bool, or None for a CNN), ``first_last``
(how the first and last layers were kept at 8 bits, or why not) and ``workaround`` (text, or
"").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Batches = Iterable[tuple[Tensor, Tensor]]
WIDTHS = ("W8A8", "W6A6", "W4A8", "W4A4")


@dataclass(frozen=True)
class Width:
    """Weight and activation bits of one benchmark width, e.g. ``W4A8``."""

    w: int
    a: int

    @property
    def name(self) -> str:
        return f"W{self.w}A{self.a}"

    @property
    def is_int8(self) -> bool:
        return self.w == 8 and self.a == 8


def parse_width(text: str) -> Width:
    """``"W4A8"`` -> ``Width(4, 8)``; ValueError naming the valid widths otherwise."""
    match = re.fullmatch(r"W(\d+)A(\d+)", text.upper())
    if match is None or text.upper() not in WIDTHS:
        raise ValueError(f"unknown width {text!r}; valid: {', '.join(WIDTHS)}")
    return Width(int(match.group(1)), int(match.group(2)))


def compute_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear modules, in module order (the layers PTQ quantizes)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def first_last(model: nn.Module) -> tuple[str, str]:
    """Names of the first and last compute layers (the ones kept at 8 bits, as eaq does)."""
    names = compute_layers(model)
    return names[0], names[-1]


def is_vit(model: nn.Module) -> bool:
    """True when the model has attention blocks (timm's ``Attention``)."""
    return any(type(m).__name__ == "Attention" for m in model.modules())


class CallableModel(nn.Module):
    """A quantized model (a module, an exported graph or an onnxruntime session) as a plain
    module for :func:`eaq.evaluate`: it calls ``fn`` and holds no submodules, so ``eval()``
    never reaches a graph that forbids it (torch.export's)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self._fn = [fn]  # a list keeps a module out of the module tree

    def forward(self, x: Tensor) -> Tensor:
        out = self._fn[0](x)
        return out[0] if isinstance(out, tuple | list) else out


def _is_dequant(node: object) -> bool:
    return isinstance(node, torch.fx.Node) and "dequantize" in str(node.target)


def fx_quantized_counts(gm: torch.fx.GraphModule) -> tuple[int, int, int]:
    """In a converted PT2E graph: (quantized conv/linear, quantized activation-activation
    matmuls, all activation-activation matmuls). A layer counts as quantized when its weight
    (or, for a matmul, both inputs) comes out of a dequantize node."""
    layers = matmuls = all_matmuls = 0
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op != "call_function":
            continue
        if any(op in target for op in ("conv2d", "aten.linear")):
            layers += _is_dequant(node.args[1])
        elif any(op in target for op in ("aten.matmul", "aten.bmm")):
            all_matmuls += 1
            matmuls += _is_dequant(node.args[0]) and _is_dequant(node.args[1])
    return layers, matmuls, all_matmuls


def layer_widths(stats, width: Width, info: dict) -> list[tuple[int | None, int | None]]:
    """Each layer of ``stats`` (eaq's :func:`eaq.collect_stats`) at the width the peer gave it,
    which eaq's energy model (:func:`eaq.energy.cost.energy`) then costs: conv/linear layers at
    ``width``, the first and last at 8 bits, the names in ``info["float_layers"]`` in float,
    those in ``info["widths"]`` (name -> (w, a)) as given; attention matmuls at the activation
    width where the peer quantizes them (``info["attention_matmuls"]``), else float. A name
    that is not a layer of ``stats`` is an error."""
    layers = [layer for layer in stats.layers if layer.kind != "matmul"]
    eight = {layers[0].name, layers[-1].name} if layers else set()
    floats = set(info.get("float_layers") or ())
    given = {name: tuple(w) for name, w in (info.get("widths") or {}).items()}
    unknown = (floats | set(given)) - {layer.name for layer in layers}
    if unknown:
        raise ValueError(f"the peer names layers eaq's statistics lack: {sorted(unknown)}")
    widths: list[tuple[int | None, int | None]] = []
    for layer in stats.layers:
        if layer.kind == "matmul":
            widths.append((width.a, width.a) if info.get("attention_matmuls") else (None, None))
        elif layer.name in floats:
            widths.append((None, None))
        elif layer.name in given:
            widths.append(given[layer.name])
        elif layer.name in eight:
            widths.append((8, 8))
        else:
            widths.append((width.w, width.a))
    return widths


def fx_float_layers(gm: torch.fx.GraphModule) -> list[str]:
    """In a converted PT2E graph: the module paths of the conv/linear layers whose weight
    does not come out of a dequantize node (left in float), from each node's module stack."""
    names = []
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op != "call_function" or not any(op in target for op in ("conv2d", "aten.linear")):
            continue
        if not _is_dequant(node.args[1]):
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else node.name
            names.append(path.removeprefix("L['self'].").removeprefix("L__self__."))
    return names
