"""Quantized layers and the model-surgery walker that puts them into a model."""

from eaq.nn.attention import QuantAttention
from eaq.nn.layers import QuantConv2d, QuantLinear, QuantMatMul
from eaq.nn.surgery import (
    ATTENTION_MAP,
    LAYER_MAP,
    LayerSummary,
    QuantSummary,
    calibrate_,
    check_plan,
    quantizable_layers,
    quantize_,
)

__all__ = [
    "ATTENTION_MAP",
    "LAYER_MAP",
    "LayerSummary",
    "QuantAttention",
    "QuantConv2d",
    "QuantLinear",
    "QuantMatMul",
    "QuantSummary",
    "calibrate_",
    "check_plan",
    "quantizable_layers",
    "quantize_",
]
