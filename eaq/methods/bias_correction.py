"""Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019, Sec. 4.2, empirical variant).

Quantization shifts the mean of a layer's output: ``E[y~] != E[y]``. For every quantized conv
and linear, in module order, the bias absorbs the per-output-channel difference between the
float model's output and the quantized model's output on the calibration images::

    bias += E[y_float] - E[y_quant]     (mean over the batch and, for convs, the positions)

Each layer is measured after the earlier layers were corrected, so a correction also covers the
shift the earlier quantized layers left in its input. Layers without a bias get one. The passes
that measure a layer replay the outputs of the blocks already corrected
(:class:`~eaq.nn.hooks.ProgressiveReplay`) rather than recomputing them from the image.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from eaq.methods.folding import fold_batchnorm_
from eaq.methods.registry import Batches, register_method
from eaq.models.blocks import outer_blocks
from eaq.nn import QuantConv2d, QuantLinear, QuantSummary, calibrate_, quantize_
from eaq.nn.hooks import ProgressiveReplay, StopForward, forward_until_stopped, hooks_on
from eaq.plan import Plan

__all__ = ["bias_correct_"]


def _channel_mean(y: Tensor, conv: bool) -> Tensor:
    """Sum over all dims but the output channel (dim 1 for convs, the last dim for linears)."""
    if conv:
        return y.transpose(0, 1).reshape(y.shape[1], -1).double().sum(1)
    return y.reshape(-1, y.shape[-1]).double().sum(0)


def _count(y: Tensor, conv: bool) -> int:
    return y.numel() // (y.shape[1] if conv else y.shape[-1])


@torch.no_grad()
def _output_means(model: nn.Module, names: list[str], calib: Batches) -> dict[str, Tensor]:
    """Per-channel output mean of each named layer over ``calib``, in one pass."""
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook_for(name: str, conv: bool):
        def hook(_m, _inp, out):
            s = _channel_mean(out, conv)
            sums[name] = s if name not in sums else sums[name] + s
            counts[name] += _count(out, conv)

        return hook

    modules = {name: model.get_submodule(name) for name in names}
    pairs = [(m, hook_for(n, isinstance(m, nn.Conv2d))) for n, m in modules.items()]
    with hooks_on(pairs):
        for images, _ in calib:
            model(images)
    return {name: sums[name] / counts[name] for name in names}


@torch.no_grad()
def _layer_mean(model: nn.Module, layer: nn.Module, calib: Batches) -> Tensor:
    """Per-channel output mean of ``layer`` inside ``model``; each pass stops after the layer."""
    conv = isinstance(layer, nn.Conv2d)
    total: list = [None, 0]

    def hook(_m, _inp, out):
        s = _channel_mean(out, conv)
        total[0] = s if total[0] is None else total[0] + s
        total[1] += _count(out, conv)
        raise StopForward

    with hooks_on([(layer, hook)]):
        for images, _ in calib:
            forward_until_stopped(model, images)
    return total[0] / total[1]


@torch.no_grad()
def bias_correct_(model: nn.Module, reference: nn.Module, calib: Batches) -> dict[str, Tensor]:
    """Correct the bias of every quantized conv/linear of ``model`` against ``reference``.

    Args:
        model: The quantized, calibrated model (changed in place).
        reference: The float model it came from (same module names; not changed).
        calib: Calibration batches of (images, labels).

    Returns:
        The correction added to each layer's bias, by layer name.
    """
    model.eval()
    reference.eval()
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear)
        and (m.weight_quantizer is not None or m.input_quantizer is not None)
    ]
    float_means = _output_means(reference, names, calib)
    replay = ProgressiveReplay(model, outer_blocks(model), [x for x, _ in calib])
    corrections = {}
    for name in names:
        layer = model.get_submodule(name)
        with replay.before(name):
            mean = _layer_mean(model, layer, calib)
        delta = (float_means[name] - mean).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(delta))
        layer.bias.add_(delta)
        corrections[name] = delta
    return corrections


@register_method(
    "biascorr", "BatchNorm folding, plain PTQ, then empirical bias correction (Nagel et al. 2019)"
)
def biascorr(model: nn.Module, plan: Plan, calib: Batches) -> QuantSummary:
    fold_batchnorm_(model)
    reference = copy.deepcopy(model).eval()
    summary = quantize_(model, plan)
    calibrate_(model, calib)
    bias_correct_(model, reference, calib)
    return summary
