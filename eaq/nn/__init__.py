"""Quantized layers and the model-surgery walker that puts them into a model."""

from eaq.nn.attention import QuantAttention, QuantMultiheadAttention
from eaq.nn.layers import (
    QuantConv2d,
    QuantConv2dSame,
    QuantLinear,
    QuantMatMul,
    weights_quantized_once,
)
from eaq.nn.surgery import (
    ATTENTION_MAP,
    GELU_TYPES,
    LAYER_MAP,
    MLP_TYPES,
    LayerSummary,
    QuantSummary,
    calibrate_,
    check_plan,
    input_roles,
    layer_kind,
    open_outputs,
    quantizable_layers,
    quantize_,
    quantized_layer,
)

__all__ = [
    "ATTENTION_MAP",
    "GELU_TYPES",
    "LAYER_MAP",
    "MLP_TYPES",
    "LayerSummary",
    "QuantAttention",
    "QuantConv2dSame",
    "QuantMultiheadAttention",
    "QuantConv2d",
    "QuantLinear",
    "QuantMatMul",
    "QuantSummary",
    "calibrate_",
    "check_plan",
    "input_roles",
    "layer_kind",
    "open_outputs",
    "quantizable_layers",
    "quantize_",
    "quantized_layer",
    "weights_quantized_once",
]
