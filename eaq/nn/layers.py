"""Quantized layers: a float layer plus quantizers for its weight and its input(s).

Each layer is the float layer's subclass (its state_dict keys stay the same, plus the
quantizers' buffers) and is made with ``from_float``. A quantizer that is ``None`` leaves that
tensor in floating point.

A layer may know the role of its input (:data:`eaq.plan.INPUT_ROLES`: ``"softmax"`` or
``"gelu"``); the layer config then picks that input's quantizer kind
(:meth:`~eaq.plan.LayerConfig.act_quantizer`: uniform, log2 or twin). Without a role, or with the
config's defaults, every quantizer is the uniform :class:`~eaq.quant.Quantizer`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from eaq.plan import LayerConfig
from eaq.quant import Quantizer, make_quantizer


def _make(spec, kind: str = "uniform") -> Quantizer | None:
    return make_quantizer(spec, kind)


def _apply(q: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if q is None else q(x)


# layer -> its weight fake-quantized on entering weights_quantized_once (weak keys: a copy of a
# model made inside the block is a new layer, and quantizes its own weight on every forward)
_FROZEN: weakref.WeakKeyDictionary[nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def _quantized_weight(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    frozen = _FROZEN.get(layer)
    return frozen if frozen is not None else _apply(layer.weight_quantizer, layer.weight)


@contextmanager
def weights_quantized_once(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, each quantized conv and linear layer of ``model`` uses its weight
    fake-quantized once on entry instead of on every forward: the same values, computed once
    (an evaluation's batches all see the same weights). Nothing may change the weights or their
    quantizers inside the block; layers whose weight quantizer is disabled, calibrating or not
    yet calibrated quantize on every forward as usual. Blocks may nest."""
    frozen = []
    try:
        with torch.no_grad():
            for m in model.modules():
                q = getattr(m, "weight_quantizer", None)
                if not isinstance(m, (QuantConv2d, QuantLinear)) or not isinstance(q, Quantizer):
                    continue
                if q.enabled and not q.calibrating and q.is_calibrated and m not in _FROZEN:
                    _FROZEN[m] = q(m.weight)
                    frozen.append(m)
        yield model
    finally:
        for m in frozen:
            _FROZEN.pop(m, None)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and input, and optionally output.

    ``output_quantizer`` (None unless the plan asks for ``quantize_outputs``) quantizes what
    the layer writes, where no quantized layer reads it next (a residual branch before its add):
    an integer kernel then writes integers there too.
    """

    input_quantizer: Quantizer | None
    weight_quantizer: Quantizer | None
    output_quantizer: Quantizer | None
    input_role: str | None

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, config: LayerConfig, input_role: str | None = None
    ) -> QuantConv2d:
        """The quantized twin of ``conv``; ``input_role`` picks the input quantizer's kind."""
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        q.weight, q.bias = conv.weight, conv.bias
        q.train(conv.training)
        q.input_role = input_role
        q.input_quantizer = _make(config.act_spec(), config.act_quantizer(input_role))
        q.weight_quantizer = _make(config.weight_spec())
        q.output_quantizer = None
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _apply(self.input_quantizer, x)
        y = self._conv_forward(x, _quantized_weight(self), self.bias)
        return _apply(self.output_quantizer, y)


class QuantConv2dSame(QuantConv2d):
    """timm's ``Conv2dSame`` (TensorFlow "same" padding computed from the input) quantized:
    the input is quantized, then padded with zeros (a code of its own), then convolved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers.padding import pad_same

        x = _apply(self.input_quantizer, x)
        x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        w = _quantized_weight(self)
        y = F.conv2d(x, w, self.bias, self.stride, (0, 0), self.dilation, self.groups)
        return _apply(self.output_quantizer, y)


class QuantLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input, and optionally output (as
    :class:`QuantConv2d`)."""

    input_quantizer: Quantizer | None
    weight_quantizer: Quantizer | None
    output_quantizer: Quantizer | None
    input_role: str | None

    @classmethod
    def from_float(
        cls, linear: nn.Linear, config: LayerConfig, input_role: str | None = None
    ) -> QuantLinear:
        """The quantized twin of ``linear``; ``input_role`` picks the input quantizer's kind."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q.train(linear.training)
        q.input_role = input_role
        q.input_quantizer = _make(config.act_spec(), config.act_quantizer(input_role))
        q.weight_quantizer = _make(config.weight_spec())
        q.output_quantizer = None
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _apply(self.input_quantizer, x)
        y = F.linear(x, _quantized_weight(self), self.bias)
        return _apply(self.output_quantizer, y)

    def extra_repr(self) -> str:
        role = getattr(self, "input_role", None)
        return super().extra_repr() + (f", input_role={role}" if role else "")


class QuantMatMul(nn.Module):
    """``a @ b`` of two activations, each input with its own quantizer (attention matmuls).

    Without a config it is a plain matmul, so an attention module can always hold one.

    Args:
        config: Quantizes both inputs (None: a plain matmul until :meth:`configure`).
        a_role: The role of the first input (``"softmax"`` for attention probabilities), which
            picks its quantizer kind.
    """

    def __init__(self, config: LayerConfig | None = None, *, a_role: str | None = None) -> None:
        super().__init__()
        self.a_role = a_role
        self.configure(config)

    def configure(self, config: LayerConfig | None) -> None:
        """Set (or clear, with None) the input quantizers."""
        spec = None if config is None else config.act_spec()
        kind = "uniform" if config is None else config.act_quantizer(self.a_role)
        self.a_quantizer = _make(spec, kind)
        self.b_quantizer = _make(spec)

    @property
    def is_quantized(self) -> bool:
        return self.a_quantizer is not None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _apply(self.a_quantizer, a) @ _apply(self.b_quantizer, b)

    def extra_repr(self) -> str:
        return f"a_role={self.a_role}" if self.a_role else ""
