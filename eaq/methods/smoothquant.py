"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models", ICML 2023) for the Linear layers of timm Vision Transformers.

Activation outliers sit in a few input channels. Per input channel ``j`` of a Linear,
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|X_j|`` over the calibration set,
``max|W_j|`` over the weight's column ``j``); the activation is divided by ``s`` and the weight
columns multiplied by it, which leaves the float function unchanged and moves quantization
difficulty from activations to weights. The division is folded into the preceding LayerNorm's
weight and bias, so it costs nothing at inference.

Which Linears are smoothed (the rule, :func:`find_norm_linear_pairs`): in every module that has
timm ``Block``'s structure, ``norm1`` (a LayerNorm) feeding ``attn.qkv`` and ``norm2`` feeding
``mlp.fc1``. Other Linears (``attn.proj``, ``mlp.fc2``, the head) have no foldable producer and
are left alone.

The same pairs carry RepQ-ViT's post-LayerNorm reparameterization
(:func:`reparameterize_post_layernorm_`, method ``repq``): each channel of the LayerNorm output
is shifted and scaled onto one common range, the Linear taking the inverse, so that one
per-tensor activation scale does what per-channel scales would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.folding import fold_batchnorm_
from eaq.methods.registry import Batches, get_method, register_method, run_then
from eaq.nn import QuantSummary
from eaq.nn.hooks import hooks_on
from eaq.plan import Plan

__all__ = [
    "find_norm_linear_pairs",
    "input_channel_absmax",
    "input_channel_range",
    "reparameterize_post_layernorm_",
    "smooth_",
]

_PAIRS = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"))


def find_norm_linear_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layernorm_name, linear_name)`` pairs of timm blocks (see the module docstring)."""
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for norm_name, linear_name in _PAIRS:
            try:
                norm = module.get_submodule(norm_name)
                linear = module.get_submodule(linear_name)
            except AttributeError:
                continue
            if (
                isinstance(norm, nn.LayerNorm)
                and norm.elementwise_affine
                and isinstance(linear, nn.Linear)
                and tuple(norm.normalized_shape) == (linear.in_features,)
            ):
                pairs.append((prefix + norm_name, prefix + linear_name))
    return pairs


@torch.no_grad()
def input_channel_range(
    model: nn.Module, names: list[str], calib: Batches
) -> dict[str, tuple[Tensor, Tensor]]:
    """``(min_j, max_j)`` per input channel of each named Linear over ``calib`` (one pass)."""
    ranges: dict[str, tuple[Tensor, Tensor]] = {}

    def hook_for(name: str):
        def hook(_m, inp):
            x = inp[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            lo, hi = x.amin(0), x.amax(0)
            if name in ranges:
                lo, hi = torch.minimum(ranges[name][0], lo), torch.maximum(ranges[name][1], hi)
            ranges[name] = (lo, hi)

        return hook

    model.eval()
    with hooks_on([(model.get_submodule(n), hook_for(n)) for n in names], pre=True):
        for images, _ in calib:
            model(images)
    return ranges


@torch.no_grad()
def input_channel_absmax(model: nn.Module, names: list[str], calib: Batches) -> dict[str, Tensor]:
    """``max|X_j|`` per input channel of each named Linear over ``calib`` (one pass)."""
    ranges = input_channel_range(model, names, calib)
    return {name: torch.maximum(lo.abs(), hi.abs()) for name, (lo, hi) in ranges.items()}


@torch.no_grad()
def smooth_(model: nn.Module, calib: Batches, alpha: float = 0.5) -> dict[str, Tensor]:
    """Apply SmoothQuant to every LayerNorm -> Linear pair of ``model`` (float), in place.

    Returns:
        The smoothing factors ``s`` by Linear name.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pairs = find_norm_linear_pairs(model)
    act_max = input_channel_absmax(model, [lin for _, lin in pairs], calib)
    factors = {}
    for norm_name, linear_name in pairs:
        norm = model.get_submodule(norm_name)
        linear = model.get_submodule(linear_name)
        w_max = linear.weight.abs().amax(0).float().clamp(min=1e-5)
        x_max = act_max[linear_name].clamp(min=1e-5)
        s = (x_max.pow(alpha) / w_max.pow(1.0 - alpha)).clamp(min=1e-5)
        s = s.to(linear.weight.dtype)
        norm.weight.div_(s)
        if norm.bias is not None:
            norm.bias.div_(s)
        linear.weight.mul_(s[None, :])
        factors[linear_name] = s
    return factors


def _check(*, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise EaqError(f"alpha must be in [0, 1], got {alpha}")


def _check_model(model: nn.Module) -> None:
    if not find_norm_linear_pairs(model):
        raise EaqError(
            "smoothquant needs LayerNorm -> Linear pairs (transformer blocks) and this model has "
            "none; pick another method (`eaq methods`)"
        )


@register_method(
    "smoothquant",
    "SmoothQuant (Xiao et al. 2022): LayerNorm->Linear smoothing, PTQ",
    check=_check,
    needs=("activations",),
    check_model=_check_model,
)
def smoothquant(
    model: nn.Module, plan: Plan, calib: Batches, *, alpha: float = 0.5
) -> QuantSummary:
    _check_model(model)
    fold_batchnorm_(model)
    smooth_(model, calib, alpha=alpha)
    return get_method("ptq").fn(model, plan, calib)


@torch.no_grad()
def reparameterize_post_layernorm_(model: nn.Module, calib: Batches) -> dict[str, Tensor]:
    """RepQ-ViT's post-LayerNorm reparameterization, in place on a float model.

    A LayerNorm's output has channels with very different ranges, which one per-tensor scale
    cannot serve at 4 bits; per-channel activation scales can, but integer kernels want one.
    For each LayerNorm -> Linear pair, channel ``j`` of the LayerNorm output, with calibration
    range ``[lo_j, hi_j]``, centre ``c_j`` and half-width ``h_j``, becomes
    ``x'_j = (x_j - c_j) / r_j`` with ``r_j = h_j / mean(h)``: every channel then spans the
    same range ``[-mean(h), mean(h)]``, so a per-tensor quantizer of ``x'`` has the grid of a
    per-channel quantizer of ``x``. The LayerNorm's weight and bias absorb the map
    (``gamma / r``, ``(beta - c) / r``) and the Linear its inverse (columns times ``r``, bias
    plus ``W c``), so the float function is unchanged (Li et al., "RepQ-ViT: Scale
    Reparameterization for Post-Training Quantization of Vision Transformers", ICCV 2023,
    Sec. 4.1).

    Returns:
        ``r`` by Linear name.
    """
    pairs = find_norm_linear_pairs(model)
    ranges = input_channel_range(model, [lin for _, lin in pairs], calib)
    factors = {}
    for norm_name, linear_name in pairs:
        norm = model.get_submodule(norm_name)
        linear = model.get_submodule(linear_name)
        lo, hi = ranges[linear_name]
        centre = (hi + lo) / 2
        half = ((hi - lo) / 2).clamp(min=1e-6)
        r = half / half.mean()
        dtype = linear.weight.dtype
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=dtype))
        linear.bias.add_(linear.weight @ centre.to(dtype))
        linear.weight.mul_(r.to(dtype)[None, :])
        norm.weight.div_(r.to(norm.weight.dtype))
        if norm.bias is None:
            norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
        norm.bias.sub_(centre.to(norm.bias.dtype)).div_(r.to(norm.bias.dtype))
        factors[linear_name] = r
    return factors


def _check_repq(*, then: str) -> None:
    if then in ("repq", "smoothquant"):
        raise EaqError(f"then must name a method that does not rescale LayerNorms, got {then!r}")
    get_method(then)


@register_method(
    "repq",
    "RepQ-ViT's post-LayerNorm reparameterization (Li et al. 2023), then a method",
    check=_check_repq,
    needs=("activations",),
    check_model=_check_model,
)
def repq(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    then: str = "ptq",
    then_options: dict | None = None,
) -> QuantSummary:
    """Reparameterize every LayerNorm -> Linear pair, then quantize with method ``then``."""
    _check_model(model)
    reparameterize_post_layernorm_(model, calib)
    return run_then(then, model, plan, calib, then_options)
