"""torchao's PT2E flow (``torchao.quantization.pt2e``): export, prepare, calibrate, convert.

The model is captured with ``torch.export``, annotated by a quantizer, calibrated on the 256
images by observers, and converted to a graph of quantize/dequantize ops around float kernels
(the reference representation), which is what is evaluated. torchao's PT2E has no PTQ algorithm
beyond its observers (histogram for activations, per-channel min/max for weights); the recipes
differ in the quantizer. Widths below 8 bits narrow each quantizer's integer range (e.g. 4-bit
weights: -7..7), which the observers honour; the first and last layers keep the 8-bit config
through ``set_module_name``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

from common import (
    Batches,
    Width,
    compute_layers,
    first_last,
    fx_float_layers,
    fx_quantized_counts,
)

PEER = "torchao"
PACKAGE = "torchao"
RECIPES = {
    "default": "X86InductorQuantizer default config: uint8 histogram activations, per-channel "
    "int8 weights; quantizes conv, linear and matmul",
    "xnnpack": "XNNPACKQuantizer symmetric per-channel config (torchao.testing; the executorch "
    "flow): int8 histogram activations; conv and linear, not matmul",
}


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """torchao's quantizers can express every benchmark width (narrowed integer ranges)."""
    return None


def _narrow(spec, bits: int):
    """A copy of a QuantizationSpec whose integer range holds ``bits`` bits (same signedness;
    symmetric weights stay symmetric: -(2^(b-1) - 1) .. 2^(b-1) - 1)."""
    if spec is None or bits == 8:
        return spec
    if spec.quant_min is not None and spec.quant_min < 0:
        low = -(2 ** (bits - 1)) + (spec.quant_min == -(spec.quant_max or 0))
        return dataclasses.replace(spec, quant_min=low, quant_max=2 ** (bits - 1) - 1)
    return dataclasses.replace(spec, quant_min=0, quant_max=2**bits - 1)


def _config(recipe: str, width: Width):
    if recipe == "default":
        base = x86.get_default_x86_inductor_quantization_config()
    else:
        from torchao.testing.pt2e._xnnpack_quantizer import get_symmetric_quantization_config

        base = get_symmetric_quantization_config(is_per_channel=True)
    return dataclasses.replace(
        base,
        input_activation=_narrow(base.input_activation, width.a),
        output_activation=_narrow(base.output_activation, width.a),
        weight=_narrow(base.weight, width.w),
    ), base


def _quantizer(recipe: str, width: Width, model: nn.Module):
    config, int8 = _config(recipe, width)
    if recipe == "default":
        quantizer = x86.X86InductorQuantizer().set_global(config)
        set_name = quantizer.set_module_name_qconfig
    else:
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer

        quantizer = XNNPACKQuantizer().set_global(config)
        set_name = quantizer.set_module_name
    if not width.is_int8:  # at W8A8 the global config is already the 8-bit one
        for name in first_last(model):
            set_name(name, int8)
    return quantizer


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[torch.fx.GraphModule, dict]:
    """Export, annotate with ``recipe``'s quantizer (see RECIPES), calibrate and convert."""
    calib = list(calib_batches)
    batch = {0: torch.export.Dim.AUTO}  # calibration and test batches differ in size
    exported = torch.export.export(model, (calib[0][0],), dynamic_shapes=(batch,)).module()
    prepared = prepare_pt2e(exported, _quantizer(recipe, width, model))
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for x, _ in calib:
            prepared(x)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    layers, matmuls, _ = fx_quantized_counts(converted)
    n_layers = len(compute_layers(model))
    info = {
        "quantized_layers": layers,
        "attention_matmuls": matmuls > 0,
        "first_last": f"{n_layers - layers} of {n_layers} conv/linear layers left float "
        "(set_module_name did not annotate them)"
        if layers < n_layers
        else "8-bit (the global config)"
        if width.is_int8
        else "8-bit (the 8-bit config by set_module_name)",
        "float_layers": fx_float_layers(converted),
        "workaround": "",
    }
    return converted, info
