"""Per-layer work and data of one forward pass: MACs, weights, activations, element-wise ops.

:func:`collect_stats` runs the model once (on a copy whose timm attention is converted to
:class:`~eaq.nn.QuantAttention`, with no quantizers, so Q*K^T and softmax*V are
:class:`~eaq.nn.QuantMatMul` modules) with forward hooks, and counts per image:

======  ===========================================================================================
kind    MACs
======  ===========================================================================================
conv    ``output elements * (in_channels / groups) * kh * kw``
linear  ``tokens * in_features * out_features`` with ``tokens = input numel / in_features``: a
        Linear applied to 197 tokens does 197 times the work of one (the seed counted it once)
matmul  ``batch-broadcast(a @ b)``: ``prod(batch dims) * n * k * m``; both operands are
        activations
======  ===========================================================================================

``weight_elems`` counts every parameter of the layer (weight and bias, as the seed's
"parameters"); ``input_elems`` is the input tensor (both operands of a matmul), ``output_elems``
the output. A module called twice is counted twice.

Element-wise work is reported apart (it is not part of the energy of a plan), in output
elements per image: ``batchnorm``, ``layernorm``, ``relu``, ``gelu`` and ``pool`` from hooks on
those modules (each call); ``softmax`` is the size of each Q*K^T score matrix (timm's attention
applies it as a tensor method, not a module); ``residual_add`` is the output size of each
residual block times its adds per call (:data:`RESIDUAL_BLOCKS`: torchvision ``BasicBlock`` and
``Bottleneck`` 1, timm ``Block`` 2, eaq's CIFAR ``BasicBlockA`` 1).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from eaq.errors import EaqError
from eaq.nn import QuantAttention, QuantMatMul, quantizable_layers, quantize_
from eaq.plan import Plan

ELEMENTWISE_TYPES: dict[type[nn.Module], str] = {
    nn.BatchNorm1d: "batchnorm",
    nn.BatchNorm2d: "batchnorm",
    nn.LayerNorm: "layernorm",
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.GELU: "gelu",
    nn.MaxPool2d: "pool",
    nn.AvgPool2d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
}
ELEMENTWISE_KINDS = ("batchnorm", "layernorm", "relu", "gelu", "softmax", "pool", "residual_add")


def _residual_blocks() -> dict[type[nn.Module], int]:
    """Residual block types -> element-wise adds of their output size per call."""
    from timm.models.vision_transformer import Block
    from torchvision.models.resnet import BasicBlock, Bottleneck

    blocks: dict[type[nn.Module], int] = {BasicBlock: 1, Bottleneck: 1, Block: 2}
    try:  # eaq's CIFAR ResNet-20/56 block: relu2(out + shortcut(x))
        from eaq.models.resnet_cifar import BasicBlockA

        blocks[BasicBlockA] = 1
    except ImportError:
        pass
    return blocks


RESIDUAL_BLOCKS = _residual_blocks()


@dataclass(frozen=True)
class LayerStats:
    """One quantizable layer's work and data per image.

    Attributes:
        name: module path, as in :func:`eaq.nn.quantizable_layers` (a plan resolves against it).
        kind: ``conv``, ``linear`` or ``matmul``.
        macs: multiply-accumulates per image.
        weight_elems: parameter elements (weight + bias; 0 for a matmul).
        input_elems: input elements per image (both operands for a matmul).
        output_elems: output elements per image.
    """

    name: str
    kind: str
    macs: int
    weight_elems: int
    input_elems: int
    output_elems: int

    @property
    def mem_elems(self) -> int:
        """Elements the seed's model charges for memory: parameters + input + output."""
        return self.weight_elems + self.input_elems + self.output_elems


@dataclass(frozen=True)
class ModelStats:
    """Per-layer statistics of one model at one input size (per image).

    Attributes:
        layers: one :class:`LayerStats` per quantizable layer, in ``quantizable_layers`` order.
        elementwise: element-wise work, kind -> elements per image (see the module docstring).
        input_size: ``(channels, height, width)`` of the forward pass.
    """

    layers: tuple[LayerStats, ...]
    elementwise: dict[str, int] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def macs_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for layer in self.layers:
            out[layer.kind] += layer.macs
        return dict(out)

    @property
    def total_weight_elems(self) -> int:
        return sum(layer.weight_elems for layer in self.layers)

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "total_macs": self.total_macs,
            "macs_by_kind": self.macs_by_kind(),
            "weight_elems": self.total_weight_elems,
            "elementwise": dict(self.elementwise),
            "layers": [layer.__dict__ for layer in self.layers],
        }


def _lookup_type(table: dict, module: nn.Module):
    """``table``'s entry for the module's class or its nearest base class (timm's LayerNorm)."""
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def _input_shape(input_size: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        shape = (3, input_size, input_size)
    else:
        t = tuple(int(v) for v in input_size)
        shape = {1: lambda: (3, t[0], t[0]), 2: lambda: (3, *t), 3: lambda: t}.get(
            len(t), lambda: ()
        )()
    if len(shape) != 3 or any(v < 1 for v in shape):
        raise EaqError(
            f"input size must be S, (H, W) or (C, H, W) with positive sizes, got {input_size!r}"
        )
    return shape  # type: ignore[return-value]


def collect_stats(
    model: nn.Module, input_size: int | tuple[int, ...], *, batch: int = 1
) -> ModelStats:
    """Count each quantizable layer's MACs and elements in one forward pass (per image).

    The model is not changed: a deep copy is converted with ``quantize_(copy, Plan(default=None))``
    (attention becomes :class:`~eaq.nn.QuantAttention`, numerically unchanged) and run once on
    zeros of shape ``[batch, C, H, W]`` under ``torch.inference_mode``.

    Args:
        model: a float model (Conv2d / Linear / timm Attention).
        input_size: ``S`` (square), ``(H, W)`` or ``(C, H, W)``.
        batch: images in the forward pass; every count is divided by it.

    Examples:
        >>> stats = collect_stats(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), 4)
        >>> stats.layers[0].macs  # 8 * 4 * 4 outputs x 3 * 3 * 3 each
        3456
    """
    if batch < 1:
        raise EaqError(f"batch must be >= 1, got {batch}")
    shape = _input_shape(input_size)
    float_model = model
    model = copy.deepcopy(model).eval()
    quantize_(model, Plan(default=None, first_last_8bit=False))
    refs = quantizable_layers(model)
    kinds = {ref.name: ref.kind for ref in refs}
    counts: dict[str, list[int]] = {ref.name: [0, 0, 0, 0] for ref in refs}
    elementwise: dict[str, int] = dict.fromkeys(ELEMENTWISE_KINDS, 0)
    handles = []

    def layer_hook(name: str, kind: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            c = counts[name]
            if kind == "conv":
                kh, kw = module.kernel_size
                c[0] += output.numel() * (module.in_channels // module.groups) * kh * kw
                c[2] += inputs[0].numel()
            elif kind == "linear":
                x = inputs[0]
                tokens = x.numel() // module.in_features
                c[0] += tokens * module.in_features * module.out_features
                c[2] += x.numel()
            else:  # matmul: a [..., n, k] @ b [..., k, m] -> [..., n, m]
                a, b = inputs
                k = a.shape[-1]
                c[0] += output.numel() * k
                c[2] += a.numel() + b.numel()
            c[1] += sum(p.numel() for p in module.parameters(recurse=False))
            c[3] += output.numel()

        return hook

    def elementwise_hook(kind: str, per_call: int = 1):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            elementwise[kind] += per_call * output.numel()

        return hook

    for name, module in model.named_modules():
        if name in kinds:
            handles.append(module.register_forward_hook(layer_hook(name, kinds[name])))
        elif (ew := _lookup_type(ELEMENTWISE_TYPES, module)) is not None:
            handles.append(module.register_forward_hook(elementwise_hook(ew)))
        adds = _lookup_type(RESIDUAL_BLOCKS, module)
        if adds:
            handles.append(module.register_forward_hook(elementwise_hook("residual_add", adds)))
    param = next(float_model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        with torch.inference_mode():
            device = param.device if param is not None else None
            model(torch.zeros(batch, *shape, dtype=dtype, device=device))
    except RuntimeError as e:
        raise EaqError(
            f"the model does not run at input size {shape[1]}x{shape[2]}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    # Softmax over each attention score matrix: the size of the Q*K^T output.
    for name, module in model.named_modules():
        if isinstance(module, QuantAttention) and isinstance(module.qk_matmul, QuantMatMul):
            elementwise["softmax"] += counts[f"{name}.qk_matmul"][3]
    if batch > 1:
        for c in counts.values():
            for i, v in enumerate(c):
                # parameters are per module call, not per image
                c[i] = v if i == 1 else v // batch
        elementwise = {k: v // batch for k, v in elementwise.items()}
    layers = tuple(LayerStats(ref.name, ref.kind, *counts[ref.name]) for ref in refs)
    return ModelStats(layers=layers, elementwise=elementwise, input_size=shape)


def seed_miscount(stats: ModelStats, model: nn.Module) -> ModelStats:
    """``stats`` counted as the seed study's code did, to reproduce its Table 2: each Linear's
    MACs once per call (in * out, not once per token) and no attention matmuls."""
    mods = dict(model.named_modules())
    layers = tuple(
        replace(s, macs=mods[s.name].in_features * mods[s.name].out_features)
        if s.kind == "linear"
        else s
        for s in stats.layers
        if s.kind != "matmul"
    )
    return replace(stats, layers=layers)
