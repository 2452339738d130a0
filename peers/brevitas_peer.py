"""Brevitas PTQ, through its ImageNet PTQ example's helpers (``brevitas_examples...ptq_common``).

The layerwise backend replaces every Conv2d and Linear by its quantized twin (weights and input
activations fake-quantized); it needs no graph trace, so it works on DeiT, where Brevitas's fx
backend fails on the residual adds. Attention matmuls are therefore not quantized. Brevitas
keeps only layers it recognises as first/last at 8 bits (a conv with 3 input channels, a linear
with 1000 outputs); for the CIFAR heads (10/100 outputs) the harness swaps in the last layer
quantized at 8 bits instead, so first and last are 8-bit as in eaq.
"""

from __future__ import annotations

import copy

import torch
from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
from brevitas.graph.gptq import gptq_mode
from brevitas_examples.imagenet_classification.ptq.learned_round_utils import (
    apply_learned_round,
)
from brevitas_examples.imagenet_classification.ptq.ptq_common import quantize_model
from brevitas_examples.imagenet_classification.ptq.ptq_imagenet_args import create_args_parser
from torch import nn

from common import Batches, Width, first_last

PEER = "brevitas"
PACKAGE = "brevitas"
RECIPES = {
    "default": "layerwise backend, per-channel float-scale weights, sym 99.999-percentile "
    "activations, int32 bias; activation calibration only",
    "gptq-bc": "the default quantizers, then GPTQ (act_order) and bias correction, the order "
    "of Brevitas's PTQ example",
    "learned-round-bc": "the default quantizers, then learned rounding (AdaRound's hard "
    "sigmoid, the PTQ example's defaults: layerwise, 1000 iterations) and bias correction",
}


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """Brevitas expresses every benchmark width."""
    return None


def _quantize_layers(model: nn.Module, width: Width) -> nn.Module:
    return quantize_model(
        model,
        backend="layerwise",
        weight_bit_width=width.w,
        act_bit_width=width.a,
        bias_bit_width=32,
        weight_quant_granularity="per_channel",
        act_quant_percentile=99.999,
        act_quant_type="sym",
        scale_factor_type="float_scale",
        quant_format="int",
        layerwise_first_last_bit_width=8,
    )


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _run(model: nn.Module, batches: list) -> None:
    for x, _ in batches:
        model(x)


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[nn.Module, dict]:
    """Quantize layerwise, fix the last layer at 8 bits, calibrate, then ``recipe``'s steps."""
    calib = list(calib_batches)
    names = first_last(model)
    quantized = _quantize_layers(copy.deepcopy(model), width)
    if width != Width(8, 8):
        eight = _quantize_layers(model, Width(8, 8))
        for name in names:
            _set_module(quantized, name, eight.get_submodule(name))
    quantized.eval()
    with torch.no_grad():
        with calibration_mode(quantized):
            _run(quantized, calib)
        quantized(calib[0][0])  # initialises the weight quantizers, which GPTQ reads
        if recipe == "gptq-bc":
            with gptq_mode(quantized, act_order=True) as gptq:
                for _ in range(gptq.num_layers):
                    _run(gptq.model, calib)
                    gptq.update()
            with bias_correction_mode(quantized):
                _run(quantized, calib)
    if recipe == "learned-round-bc":
        args = create_args_parser().parse_args(["--learned-round", "hard_sigmoid"])
        apply_learned_round(model=quantized, calibration_loader=calib, args=args)
        with torch.no_grad(), bias_correction_mode(quantized):
            _run(quantized, calib)
    layers = sum(
        1 for m in quantized.modules() if type(m).__name__ in ("QuantConv2d", "QuantLinear")
    )
    info = {
        "quantized_layers": layers,
        "attention_matmuls": False,
        "first_last": "8-bit (first by Brevitas's rule; last swapped in by the harness)",
        "workaround": "layerwise backend (no fx trace); last layer's 8-bit twin swapped in",
    }
    return quantized, info
