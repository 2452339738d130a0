"""NVIDIA ModelOpt (``modelopt.torch.quantization``): ``mtq.quantize(model, config, loop)``.

ModelOpt swaps Conv2d/Linear for quantized twins with a weight quantizer and an input
quantizer, then calibrates them with the config's algorithm over the forward loop. Every recipe
starts from ModelOpt's ``INT8_DEFAULT_CFG`` (per-output-channel weights, per-tensor inputs,
BatchNorm/LeakyReLU/Embedding quantizers off, symmetric) with the widths narrowed to the cell's
and the first and last layers put back at 8 bits by name-matched entries (later entries win).
Fake quantization runs through ModelOpt's own PyTorch kernels on the CPU. timm's attention
matmuls are not modules ModelOpt wraps, so they stay float.
"""

from __future__ import annotations

import copy

import modelopt.torch.quantization as mtq
import torch
from torch import nn

from common import Batches, Width, compute_layers, first_last

PEER = "modelopt"
PACKAGE = "nvidia-modelopt"
RECIPES = {
    "default": "INT8_DEFAULT_CFG narrowed to the width, algorithm max (absolute maxima)",
    "mse": "the same quantizers, algorithm mse (MSE-searched weight ranges)",
    "gptq": "the same quantizers, algorithm gptq at its defaults (layerwise off: max ranges, "
    "then every Linear layer's Hessian from one pass with float weights and quantized inputs, "
    "all layers rounded at once)",
}


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """ModelOpt's integer quantizers take any bit width."""
    return None


def _config(width: Width, recipe: str, names: tuple[str, str]) -> dict:
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    entries = []
    base = {}
    for entry in config["quant_cfg"]:
        name = entry.get("quantizer_name")
        if name in ("*weight_quantizer", "*input_quantizer") and "cfg" in entry:
            kind = name[1:]
            base[kind] = entry["cfg"]
            bits = width.w if kind == "weight_quantizer" else width.a
            entry = entry | {"cfg": entry["cfg"] | {"num_bits": bits}}
        entries.append(entry)
    # 8 bits for the first and last layer, as in eaq; an entry's cfg replaces the quantizer's
    # whole config, so it repeats the default's (per-channel weight axis included)
    for layer in names:
        for kind, cfg in base.items():
            entries.append({"quantizer_name": f"{layer}.{kind}", "cfg": cfg | {"num_bits": 8}})
    algorithm = {"default": "max", "mse": "mse", "gptq": "gptq"}[recipe]
    return config | {"quant_cfg": entries, "algorithm": algorithm}


def _bits(module: nn.Module, attr: str) -> int | None:
    q = getattr(module, attr, None)
    if q is None or not getattr(q, "is_enabled", False):
        return None
    return int(q.num_bits)


def _axis(module: nn.Module) -> object:
    return getattr(getattr(module, "weight_quantizer", None), "axis", None)


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[nn.Module, dict]:
    """``mtq.quantize`` with ``recipe``'s algorithm over the calibration batches."""
    calib = list(calib_batches)
    names = first_last(model)
    n_layers = len(compute_layers(model))

    def loop(m: nn.Module) -> None:
        with torch.no_grad():
            for x, _ in calib:
                m(x)

    model = mtq.quantize(model.eval(), _config(width, recipe, names), loop)
    widths = {
        n: (_bits(m, "weight_quantizer"), _bits(m, "input_quantizer"))
        for n, m in model.named_modules()
        if hasattr(m, "weight_quantizer")
    }
    quantized = [n for n, (w, _) in widths.items() if w is not None]
    eight = all(widths.get(n) == (8, 8) for n in names)
    axes = {_axis(m) for n, m in model.named_modules() if n in widths and widths[n][0]}
    if len(axes) != 1:  # every weight quantizer per output channel, as the default config says
        raise RuntimeError(f"weight quantizers on different axes: {sorted(map(str, axes))}")
    info = {
        "quantized_layers": len(quantized),
        "attention_matmuls": False,
        "first_last": "8-bit (name-matched config entries)"
        if eight
        else f"not 8-bit: {[widths.get(n) for n in names]}",
        "float_layers": [n for n, (w, _) in widths.items() if w is None],
        "workaround": "",
    }
    if len(quantized) < n_layers:
        info["first_last"] += f"; {n_layers - len(quantized)} of {n_layers} layers float"
    return model, info
