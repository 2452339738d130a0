"""Quantized layers: a float layer plus quantizers for its weight and its input(s).

Each layer is the float layer's subclass (its state_dict keys stay the same, plus the
quantizers' buffers) and is made with ``from_float``. A quantizer that is ``None`` leaves that
tensor in floating point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eaq.plan import LayerConfig
from eaq.quant import Quantizer


def _make(spec) -> Quantizer | None:
    return None if spec is None else Quantizer(spec)


def _apply(q: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if q is None else q(x)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and input."""

    input_quantizer: Quantizer | None
    weight_quantizer: Quantizer | None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: LayerConfig) -> QuantConv2d:
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
        q.input_quantizer = _make(config.act_spec())
        q.weight_quantizer = _make(config.weight_spec())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _apply(self.input_quantizer, x)
        return self._conv_forward(x, _apply(self.weight_quantizer, self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input."""

    input_quantizer: Quantizer | None
    weight_quantizer: Quantizer | None

    @classmethod
    def from_float(cls, linear: nn.Linear, config: LayerConfig) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q.train(linear.training)
        q.input_quantizer = _make(config.act_spec())
        q.weight_quantizer = _make(config.weight_spec())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _apply(self.input_quantizer, x)
        return F.linear(x, _apply(self.weight_quantizer, self.weight), self.bias)


class QuantMatMul(nn.Module):
    """``a @ b`` of two activations, each input with its own quantizer (attention matmuls).

    Without a config it is a plain matmul, so an attention module can always hold one.
    """

    def __init__(self, config: LayerConfig | None = None) -> None:
        super().__init__()
        self.configure(config)

    def configure(self, config: LayerConfig | None) -> None:
        """Set (or clear, with None) the input quantizers."""
        spec = None if config is None else config.act_spec()
        self.a_quantizer = _make(spec)
        self.b_quantizer = _make(spec)

    @property
    def is_quantized(self) -> bool:
        return self.a_quantizer is not None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _apply(self.a_quantizer, a) @ _apply(self.b_quantizer, b)
