"""Model surgery: one walker applies a :class:`~eaq.plan.Plan` to a model, in place.

Every ``nn.Conv2d`` and ``nn.Linear`` becomes its quantized twin (:data:`LAYER_MAP`); every timm
``Attention`` becomes :class:`~eaq.nn.attention.QuantAttention`, whose ``qk_matmul`` and
``av_matmul`` are layers of kind ``matmul`` that a plan configures like any other.

Input roles, for the non-uniform quantizers of :mod:`eaq.quant.nonuniform`: ``av_matmul``'s
first input is post-softmax (marked by :class:`~eaq.nn.attention.QuantAttention`), and the second
linear of a timm ``Mlp`` whose activation is a GELU (:data:`GELU_TYPES`) with nothing but
dropout in between has a post-GELU input (found by :func:`input_roles`, passed to
``from_float``). A layer config's ``softmax_quantizer`` / ``gelu_quantizer`` apply to those
inputs only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import Conv2dSame as TimmConv2dSame
from timm.layers import Mlp as TimmMlp
from timm.layers.activations import GELU as TimmGELU
from timm.layers.activations import GELUTanh as TimmGELUTanh
from torch import nn

from eaq.errors import EaqError
from eaq.nn.attention import (
    MATMUL_NAMES,
    PROJECTION_NAMES,
    QuantAttention,
    QuantMultiheadAttention,
)
from eaq.nn.layers import QuantConv2d, QuantConv2dSame, QuantLinear, QuantMatMul
from eaq.plan import LayerConfig, LayerRef, Plan
from eaq.quant import (
    ObserverCache,
    block_size,
    calibration,
    format_granularity,
    make_quantizer,
)

LAYER_MAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
    TimmConv2dSame: QuantConv2dSame,
}
"""Float layer types and their quantized twins. A subclass of one of these types is quantized
as it when it keeps the type's ``forward``; one with a forward of its own needs an entry here."""
ATTENTION_MAP: dict[type[nn.Module], type[nn.Module]] = {
    TimmAttention: QuantAttention,
    nn.MultiheadAttention: QuantMultiheadAttention,
}
_ATTENTION_TYPES = (*ATTENTION_MAP, *ATTENTION_MAP.values())
_BASES = ((nn.Conv2d, "conv"), (nn.Linear, "linear"))


def _twin(module: nn.Module) -> type[nn.Module] | None:
    """The quantized class for a float conv/linear layer, or None if eaq cannot quantize it."""
    for cls in type(module).__mro__:
        if cls in LAYER_MAP:
            if cls is type(module) or type(module).forward is cls.forward:
                return LAYER_MAP[cls]
            return None
    return None


def layer_kind(module: nn.Module, name: str = "") -> str | None:
    """``"conv"`` or ``"linear"`` for a layer a plan can quantize, None for other modules.

    Raises:
        EaqError: a Conv2d/Linear subclass with a forward of its own and no quantized twin in
            :data:`LAYER_MAP` (it would otherwise stay float and vanish from the energy count).
    """
    for base, kind in _BASES:
        if isinstance(module, base):
            if isinstance(module, (QuantConv2d, QuantLinear)) or _twin(module) is not None:
                return kind
            raise EaqError(
                f"layer {name or '?'} is a {type(module).__name__}, an nn.{base.__name__} "
                "subclass with a forward of its own that eaq cannot quantize; add its quantized "
                "twin to eaq.nn.LAYER_MAP, or build the model with plain "
                f"nn.{base.__name__} layers"
            )
    return None


MLP_TYPES: tuple[type[nn.Module], ...] = (TimmMlp,)
"""MLPs laid out ``fc1 -> act -> drop1 -> norm -> fc2`` (timm's ``Mlp``)."""
GELU_TYPES: tuple[type[nn.Module], ...] = (nn.GELU, TimmGELU, TimmGELUTanh)


def input_roles(model: nn.Module) -> dict[str, str]:
    """Conv/linear layers whose input has a known role: ``{name: "gelu"}``.

    A layer is post-GELU when it is the ``fc2`` of an MLP (:data:`MLP_TYPES`) whose ``act`` is a
    GELU (:data:`GELU_TYPES`), ``drop1`` a dropout and ``norm`` the identity. (``av_matmul``'s
    post-softmax input is marked by the attention module itself.)
    """
    roles = {}
    for name, m in model.named_modules():
        if (
            isinstance(m, MLP_TYPES)
            and isinstance(m.act, GELU_TYPES)
            and isinstance(m.drop1, nn.Dropout | nn.Identity)
            and isinstance(m.norm, nn.Identity)
            and layer_kind(m.fc2) is not None
        ):
            roles[f"{name}.fc2" if name else "fc2"] = "gelu"
    return roles


PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.Identity,
    nn.Dropout,
)
"""Modules an output passes through on its way to the next layer's input quantizer."""
_PASS_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.dropout}
_PASS_METHODS = {"relu", "relu_"}


class _LayerTracer(torch.fx.Tracer):
    """fx's tracer with conv/linear layers and attention modules as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, *_ATTENTION_TYPES)) or super().is_leaf_module(
            m, qualname
        )


def open_outputs(model: nn.Module) -> list[str]:
    """Conv/linear layers whose output reaches something other than a conv/linear input.

    The output is followed through :data:`PASS_THROUGH` modules and ReLUs; a layer is open when
    a path ends anywhere else (a residual add, pooling, a reshape, an attention module) before
    the model's output. Layers inside an attention module are not looked into. These are the
    layers that :attr:`~eaq.plan.Plan.quantize_outputs` gives an output quantizer.

    Raises:
        EaqError: the model cannot be traced by ``torch.fx``.
    """
    try:
        graph = _LayerTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the model's
        text = " ".join(str(e).split())[:200]
        raise EaqError(
            f"quantize_outputs needs a model that torch.fx can trace ({type(e).__name__}: "
            f"{text}); quantize without it"
        ) from None
    modules = dict(model.named_modules())

    def layer(node) -> bool:
        return (
            node.op == "call_module" and layer_kind(modules[node.target], node.target) is not None
        )

    def passes(node) -> bool:
        if node.op == "call_module":
            return isinstance(modules[node.target], PASS_THROUGH)
        if node.op == "call_function":
            return node.target in _PASS_FUNCTIONS
        return node.op == "call_method" and node.target in _PASS_METHODS

    found = []
    for node in graph.nodes:
        if not layer(node):
            continue
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "output" or (layer(user) and user.args and user.args[0] in seen | {node}):
                continue
            if passes(user):
                stack.extend(user.users)
                continue
            found.append(node.target)
            break
    return found


def quantizable_layers(model: nn.Module) -> list[LayerRef]:
    """The layers a plan can address, in module order (float or already quantized model).

    An attention module contributes ``<attn>.qk_matmul`` and ``<attn>.av_matmul`` right after
    its input projection (timm's ``qkv``; ``in_proj`` of ``nn.MultiheadAttention``, whose packed
    projection is listed as a linear layer ``<attn>.in_proj``), whether or not it has been
    converted yet.

    Raises:
        EaqError: a conv/linear subclass eaq cannot quantize (see :func:`layer_kind`).
    """
    attention = {name for name, m in model.named_modules() if isinstance(m, _ATTENTION_TYPES)}
    refs: list[LayerRef] = []

    def matmuls(parent: str) -> list[LayerRef]:
        return [LayerRef(f"{parent}.{m}", "matmul") for m in MATMUL_NAMES]

    for name, module in model.named_modules():
        if type(module) is nn.MultiheadAttention:  # its projection is a parameter, not a layer
            refs.append(LayerRef(f"{name}.in_proj", "linear"))
            refs.extend(matmuls(name))
            continue
        kind = layer_kind(module, name)
        if kind is None:
            continue
        refs.append(LayerRef(name, kind))
        parent, _, leaf = name.rpartition(".")
        if leaf in PROJECTION_NAMES and parent in attention:
            refs.extend(matmuls(parent))
    return refs


def _weight_shape(model: nn.Module, name: str) -> tuple[int, ...]:
    parent, _, leaf = name.rpartition(".")
    owner = model.get_submodule(parent)
    if leaf == "in_proj" and type(owner) is nn.MultiheadAttention:
        return tuple(owner.in_proj_weight.shape)
    return tuple(model.get_submodule(name).weight.shape)


@dataclass(frozen=True)
class LayerSummary:
    """What one layer got: widths (None = float), weight granularity, observer, scheme."""

    name: str
    kind: str
    w_bits: int | None
    a_bits: int | None
    granularity: str | None
    observer: str | None
    symmetric: bool | None

    @property
    def quantized(self) -> bool:
        return self.w_bits is not None or self.a_bits is not None


@dataclass(frozen=True)
class QuantSummary:
    """The outcome of :func:`quantize_`: one row per quantizable layer."""

    layers: tuple[LayerSummary, ...]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_quantized(self) -> int:
        return sum(row.quantized for row in self.layers)

    def kind_counts(self) -> dict[str, int]:
        """Quantized layers per kind."""
        return dict(Counter(row.kind for row in self.layers if row.quantized))

    def width_counts(self) -> dict[str, int]:
        """How many layers have each ``W<w>A<a>`` combination (``fp`` for float)."""

        def tag(b: int | None) -> str:
            return "fp" if b is None else str(b)

        return dict(Counter(f"W{tag(r.w_bits)}A{tag(r.a_bits)}" for r in self.layers))

    def to_dict(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "n_quantized": self.n_quantized,
            "kinds": self.kind_counts(),
            "widths": self.width_counts(),
            "layers": [row.__dict__ for row in self.layers],
        }


def _summary_row(ref: LayerRef, cfg: LayerConfig | None) -> LayerSummary:
    if cfg is None:
        return LayerSummary(ref.name, ref.kind, None, None, None, None, None)
    w_bits = None if ref.kind == "matmul" else cfg.w_bits
    return LayerSummary(
        name=ref.name,
        kind=ref.kind,
        w_bits=w_bits,
        a_bits=cfg.a_bits,
        granularity=format_granularity(cfg.granularity) if w_bits is not None else None,
        observer=cfg.observer if cfg.a_bits is not None else None,
        symmetric=cfg.symmetric,
    )


def check_plan(model: nn.Module, plan: Plan) -> dict[str, LayerConfig | None]:
    """Resolve ``plan`` against ``model`` and check every weight granularity fits its layer.

    Changes nothing; raises :class:`EaqError` naming the layer at fault.
    """
    quantized = (QuantConv2d, QuantLinear, *ATTENTION_MAP.values())
    if any(isinstance(m, quantized) for m in model.modules()):
        raise ValueError("model is already quantized; apply a plan to a float model")
    layers = quantizable_layers(model)
    resolved = plan.resolve(layers)
    for ref in layers:
        spec = resolved[ref.name].weight_spec() if resolved[ref.name] is not None else None
        if ref.kind == "matmul" or spec is None:
            continue
        shape = _weight_shape(model, ref.name)
        try:
            block_size(shape, spec.granularity)
        except EaqError as e:
            raise EaqError(f"layer {ref.name} (weight {shape}): {e}") from None
    return resolved


def quantized_layer(module: nn.Module, cfg: LayerConfig, role: str | None = None) -> nn.Module:
    """The quantized twin of one float layer at ``cfg``, sharing its parameters: what
    :func:`quantize_` puts in its place (no output quantizer). ``role`` is the layer's input
    role (:func:`input_roles`). A :class:`QuantMatMul` (an explicit attention matmul) gives a
    new matmul of the same role with both inputs quantized at ``cfg``'s activation width."""
    if isinstance(module, QuantMatMul):
        return QuantMatMul(cfg if cfg.a_bits is not None else None, a_role=module.a_role)
    twin = _twin(module)
    if twin is None:
        raise EaqError(f"eaq cannot quantize a {type(module).__name__}")
    return twin.from_float(module, cfg, role)


def quantize_(model: nn.Module, plan: Plan) -> QuantSummary:
    """Apply ``plan`` to a float ``model`` in place and return what was quantized.

    The plan is checked first (:func:`check_plan`), so a bad plan leaves the model untouched.
    The quantizers still need calibration: run :func:`calibrate_` before evaluating.
    """
    resolved = check_plan(model, plan)
    layers = quantizable_layers(model)
    roles = input_roles(model)
    outputs = set(open_outputs(model)) if plan.quantize_outputs else set()
    for name, module in list(model.named_modules()):
        target = ATTENTION_MAP.get(type(module))
        if target is not None:
            model.set_submodule(name, target.from_float(module))
    rows = []
    for ref in layers:
        cfg = resolved[ref.name]
        module = model.get_submodule(ref.name)
        if isinstance(module, QuantMatMul):
            module.configure(cfg if cfg is not None and cfg.a_bits is not None else None)
        elif cfg is not None and (cfg.w_bits is not None or cfg.a_bits is not None):
            quant = quantized_layer(module, cfg, roles.get(ref.name))
            if ref.name in outputs and cfg.a_bits is not None:
                quant.output_quantizer = make_quantizer(cfg.act_spec())
            model.set_submodule(ref.name, quant)
        else:
            cfg = None
        rows.append(_summary_row(ref, cfg))
    return QuantSummary(tuple(rows))


def calibrate_(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    cache: ObserverCache | None = None,
) -> nn.Module:
    """Calibrate every quantizer of ``model`` on ``batches`` of (images, labels).

    With ``cache`` (for one float model and these batches; see
    :class:`~eaq.quant.ObserverCache`): no pass when every quantizer's observer is there,
    else a pass that adds its observers to it.
    """
    model.eval()
    if cache is not None and cache.restore_(model):
        return model
    with torch.no_grad(), calibration(model, cache=cache):
        for images, _ in batches:
            model(images)
    return model
