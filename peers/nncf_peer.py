"""NNCF post-training quantization (``nncf.quantize``) on the PyTorch model, 8 bits only.

NNCF's PTQ inserts 8-bit fake quantizers (per-channel symmetric weights, per-tensor
activations) following its hardware patterns, then corrects biases. The 256 calibration images
are fed one at a time (``subset_size=256``), since NNCF counts samples as dataset items. All
layers, first and last included, are 8-bit.
"""

from __future__ import annotations

import nncf
import torch
from torch import nn

from common import Batches, Width, is_vit

PEER = "nncf"
PACKAGE = "nncf"
RECIPES = {
    "default": "nncf.quantize defaults (performance preset, fast bias correction)",
    "best": "mixed preset (asymmetric activations), model_type=TRANSFORMER for the ViT "
    "(SmoothQuant and its transformer patterns); full bias correction is not supported on "
    "torch",
}


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """Why NNCF cannot run this cell, or None."""
    if not width.is_int8:
        return "NNCF's PTQ (nncf.quantize) is 8-bit only"
    return None


def _counts(model: nn.Module) -> tuple[int, bool]:
    """(quantized conv/linear layers, whether an attention matmul is quantized) in NNCF's
    model, read from its hook names: ``__nncf_hooks.pre_hooks.<scope>/<op>/<i>__<port>``,
    port 1 of a conv2d/linear being its weight."""
    hooks = [n for n, _ in model.named_modules() if n.count(".") == 2 and "nncf_hooks" in n]
    layers = sum(
        1
        for n in hooks
        if "pre_hooks" in n and n.endswith("__1") and ("/conv2d/" in n or "/linear/" in n)
    )
    return layers, any("matmul" in n for n in hooks)


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[nn.Module, dict]:
    """Quantize with ``recipe`` (see RECIPES) on the calibration images, one image per item."""
    images = [x[i : i + 1] for x, _ in calib_batches for i in range(x.shape[0])]
    options: dict = {"subset_size": len(images)}
    if recipe == "best":
        options["preset"] = nncf.QuantizationPreset.MIXED
        if is_vit(model):
            options["model_type"] = nncf.ModelType.TRANSFORMER
    with torch.no_grad():
        quantized = nncf.quantize(model, nncf.Dataset(images), **options)
    quantized.eval()
    layers, attention = _counts(quantized)
    info = {
        "quantized_layers": layers,
        "attention_matmuls": attention,
        "first_last": "8-bit (every layer is 8-bit)",
        "workaround": "",
    }
    return quantized, info
