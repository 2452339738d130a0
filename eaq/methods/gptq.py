"""GPTQ weight rounding (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023), for convs and linears.

Per layer with weight ``W`` (``[out, in]``; a conv's ``[O, I*kh*kw]``) and inputs ``X`` (a
conv's input unfolded with ``F.unfold``; by default the inputs the layer gets in the model as
quantized so far, earlier layers rounded and its own input quantizer applied), GPTQ minimises
``||W X - Q X||^2`` column by column. ``H = 2 X X^T`` is accumulated over the calibration set
and dampened by 1% of its mean diagonal; the upper Cholesky factor of ``H^-1`` drives the error
feedback: each column is rounded to the layer's weight grid and its scaled error is spread over
the not yet rounded columns (lazy updates in blocks of 128 columns). With ``act_order`` (the
method's default) the columns are taken in order of decreasing ``diag(H)``.

The grid is the weight quantizer's own (its observer, e.g. minmax or mse, calibrated on the
float weight); with group granularity each group's scale is recomputed from the error-updated
weights when GPTQ reaches the group's first column, as in the paper, and written back into the
quantizer's buffers. The layer then stores the GPTQ-rounded weight, which its weight quantizer
maps to itself (fake quantization is idempotent on the grid).

With ``target="float"`` the objective is the asymmetric one of GPTAQ (Li et al., "GPTAQ:
Efficient Finetuning-Free Quantization for Asymmetric Calibration", ICML 2025):
``||W X - Q X_q||^2``, where ``X`` is the layer's input in the float model and ``X_q`` its input
in the model as quantized so far (its own input quantizer applied). The rounding then also
compensates the error that the quantized activations bring in. It is solved in two steps. First
the least-squares weight ``W* = W + W (X - X_q) X_q^T (X_q X_q^T + damp I)^-1``, whose product
with ``X_q`` is the projection of ``W X`` onto what ``X_q`` can express (the damping, the same
as GPTQ's, shrinks only the correction). Then GPTQ on ``W*`` with ``H = 2 X_q X_q^T``: since
``W X - W* X_q`` is orthogonal to the rows of ``X_q``, minimising ``||W* X_q - Q X_q||^2``
minimises the asymmetric objective. The weight grid stays the one calibrated on ``W``.

With ``bias_correction`` the method ends with empirical bias correction
(:func:`eaq.methods.bias_correction.bias_correct_`): every quantized layer's bias absorbs the
per-channel mean shift between its output in the float model and in the GPTQ-rounded one, as
Brevitas's GPTQ recipe does. GPTQ minimises a squared error, which leaves such shifts in place.

Layers GPTQ leaves at round-to-nearest: grouped/depthwise convs, non-zero padding modes and
per-channel granularities along an axis other than 0.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.bias_correction import bias_correct_
from eaq.methods.folding import fold_batchnorm_
from eaq.methods.registry import Batches, register_method
from eaq.models.blocks import outer_blocks
from eaq.nn import QuantConv2d, QuantLinear, QuantSummary, calibrate_, quantize_
from eaq.nn.hooks import ProgressiveReplay, StopForward, forward_until_stopped, hooks_on
from eaq.plan import Plan
from eaq.quant import PerChannel, PerGroup, Quantizer, choose_qparams
from eaq.quant.primitives import _fake_quantize_impl

__all__ = ["gptq_quantize_weight", "gptq_supported", "layer_inputs_2d"]


def gptq_supported(layer: nn.Module) -> bool:
    """True if GPTQ handles ``layer``'s weight (see the module docstring for the exceptions)."""
    q = getattr(layer, "weight_quantizer", None)
    if q is None:
        return False
    g = q.spec.granularity
    if isinstance(g, PerChannel) and g.axis % layer.weight.ndim != 0:
        return False
    if isinstance(g, PerGroup) and g.axis % layer.weight.ndim != 1:
        return False
    if isinstance(layer, nn.Conv2d):
        return layer.groups == 1 and layer.padding_mode == "zeros" and layer.padding != "same"
    return isinstance(layer, nn.Linear)


def layer_inputs_2d(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as columns ``[in_features, n]`` (a conv's input unfolded)."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )  # [N, C*kh*kw, L]
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)
    return x.reshape(-1, x.shape[-1]).t()


class _Hessian:
    """Running ``H = 2/n * sum X X^T`` (float64 accumulation, as the reference keeps a mean)
    and, for the asymmetric target, ``D = 2/n * sum (X_float - X) X^T``."""

    def __init__(self) -> None:
        self.H: Tensor | None = None
        self.D: Tensor | None = None
        self.n = 0

    def add(self, cols: Tensor, float_cols: Tensor | None = None) -> None:
        cols = cols.double()
        xx = cols @ cols.t()
        self.H = xx if self.H is None else self.H + xx
        if float_cols is not None:
            dx = (float_cols.double() - cols) @ cols.t()
            self.D = dx if self.D is None else self.D + dx
        self.n += cols.shape[1]

    def value(self) -> Tensor:
        return 2.0 * self.H / max(self.n, 1)

    def correction(self) -> Tensor | None:
        return None if self.D is None else 2.0 * self.D / max(self.n, 1)


def _row_qparams(w: Tensor, quantizer: Quantizer) -> tuple[Tensor, Tensor]:
    """Per-row ``(scale, zero_point)`` of ``[out, k]`` columns, with min/max of the quantizer's
    spec (used to refit a group's scale on the error-updated weights)."""
    spec = quantizer.spec
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    return choose_qparams(lo, hi, spec.bits, symmetric=spec.symmetric, signed=True)


@torch.no_grad()
def gptq_quantize_weight(
    layer: nn.Module,
    H: Tensor,
    *,
    block_columns: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    D: Tensor | None = None,
) -> Tensor:
    """Round ``layer.weight`` with GPTQ on Hessian ``H``; store it and return it.

    With ``D`` (``2/n sum (X_float - X) X^T``, the asymmetric target's cross term) the weight is
    first moved to the least-squares ``W + W D (H + damp I)^-1`` (see the module docstring).

    ``layer.weight_quantizer`` must be calibrated (its scale sets the grid; group scales are
    refitted and written back). With ``act_order`` the columns are rounded in order of
    decreasing Hessian diagonal (the inputs with the most energy first), as the GPTQ authors'
    "act-order" does; not with per-group scales, whose groups are contiguous columns.
    """
    quantizer: Quantizer = layer.weight_quantizer
    g = quantizer.spec.granularity
    shape = layer.weight.shape
    out = shape[0]
    W = layer.weight.detach().reshape(out, -1).double().clone()
    n_cols = W.shape[1]
    qmin, qmax = quantizer._qrange
    per_col = math.prod(shape[2:]) if len(shape) > 2 else 1  # kernel positions per in-channel

    if isinstance(g, PerGroup):
        group_cols = g.size * per_col
        scale = torch.empty(out, n_cols // group_cols, dtype=torch.float32)
        zero = torch.empty(out, n_cols // group_cols, dtype=torch.int32)
    else:
        group_cols = 0
        s = quantizer.scale.float()
        z = quantizer.zero_point
        row_scale = (s.reshape(-1) if s.ndim else s.expand(out)).reshape(out, 1).double()
        row_zero = (z.reshape(-1) if z.ndim else z.expand(out)).reshape(out, 1).double()

    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(H))
    if D is not None:  # W* = W + W D Hd^-1, with Hd = H + damp I symmetric
        Hd = H + damp * torch.eye(n_cols, dtype=H.dtype)
        W = W + torch.linalg.solve(Hd, (W @ D.double()).t()).t()
    W[:, dead] = 0.0
    perm = None
    if act_order:
        if isinstance(g, PerGroup):
            raise EaqError("act_order does not combine with per-group weight scales")
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    Q = torch.zeros_like(W)
    for i1 in range(0, n_cols, block_columns):
        i2 = min(i1 + block_columns, n_cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_cols and col % group_cols == 0:
                k = col // group_cols
                # the group's columns as they are now: rounded ones are final, the rest updated
                current = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group_cols]
                sc, zp = _row_qparams(current.float(), quantizer)
                scale[:, k], zero[:, k] = sc, zp
                row_scale, row_zero = sc.double()[:, None], zp.double()[:, None]
            w = W1[:, i : i + 1]
            q, _ = _fake_quantize_impl(w, row_scale, row_zero, qmin, qmax, False)
            Q[:, col] = q[:, 0]
            err = (w[:, 0] - q[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i : i + 1, i:]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if isinstance(g, PerGroup):
        view = (out, n_cols // group_cols) + (1,) * (len(shape) - 2)
        quantizer.scale = scale.reshape(view).to(quantizer.scale.device)
        quantizer.zero_point = zero.reshape(view).to(quantizer.zero_point.device)
    new = Q.reshape(shape).to(layer.weight.dtype)
    if not isinstance(g, PerGroup):  # keep exactly what the quantizer makes of it
        new = quantizer(new)
    layer.weight.copy_(new)
    return new


@torch.no_grad()
def gptq_(
    model: nn.Module,
    calib: Batches,
    *,
    sequential: bool = True,
    float_model: nn.Module | None = None,
    **kwargs,
) -> list[str]:
    """Calibrate ``model``'s quantizers on ``calib`` and GPTQ-round its supported weights.

    With ``sequential`` (the default), layers are rounded in module order and each layer's
    Hessian comes from the inputs it gets in the model as quantized so far: the earlier layers
    already rounded and its own input quantized, as it will run. Those passes replay the
    outputs of the blocks already rounded (:class:`~eaq.nn.hooks.ProgressiveReplay`) instead
    of recomputing them from the image. Without it, every Hessian
    comes from the float inputs of one calibration pass (cheaper: one pass instead of one per
    layer). With ``float_model`` (the model before quantization, same module names; sequential
    only), each layer's target is its output on the float model's input: the asymmetric
    objective of the module docstring. Returns the names of the GPTQ-rounded layers.
    """
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and gptq_supported(m)
    }
    if float_model is not None and not sequential:
        raise EaqError("gptq: the float target needs sequential=true")
    hessians = {name: _Hessian() for name in layers}
    if not sequential:
        pairs = [
            (m, lambda mod, inp, name=name: hessians[name].add(layer_inputs_2d(mod, inp[0])))
            for name, m in layers.items()
        ]
        with hooks_on(pairs, pre=True):
            calibrate_(model, calib)
        for name, layer in layers.items():
            gptq_quantize_weight(layer, hessians[name].value(), **kwargs)
            hessians[name] = None  # free it
        return list(layers)

    calibrate_(model, calib)
    model.eval()
    images = [x for x, _ in calib]
    replay = ProgressiveReplay(model, outer_blocks(model), images)
    float_replay = None
    if float_model is not None:
        float_model.eval()
        float_replay = ProgressiveReplay(float_model, outer_blocks(float_model), images)
    for name, layer in layers.items():
        float_input: list[Tensor] = []

        def take_float(mod, inp, buf=float_input):
            buf.append(inp[0])
            raise StopForward

        def take(mod, inp, name=name, buf=float_input):
            x = inp[0]
            if mod.input_quantizer is not None:
                x = mod.input_quantizer(x)
            float_cols = layer_inputs_2d(mod, buf.pop()) if buf else None
            hessians[name].add(layer_inputs_2d(mod, x), float_cols)
            raise StopForward

        hooks = [(layer, take)]
        if float_model is not None:
            hooks.append((float_model.get_submodule(name), take_float))
        float_replaying = float_replay.before(name) if float_replay else contextlib.nullcontext()
        with hooks_on(hooks, pre=True), replay.before(name), float_replaying:
            for x in images:
                if float_model is not None:
                    forward_until_stopped(float_model, x)
                forward_until_stopped(model, x)
        h = hessians[name]
        gptq_quantize_weight(layer, h.value(), D=h.correction(), **kwargs)
        hessians[name] = None
    return list(layers)


TARGETS = ("quantized", "float")


def _check(
    *,
    percdamp: float,
    block_columns: int,
    act_order: bool,
    sequential: bool,
    target: str,
    bias_correction: bool,
) -> None:
    if target not in TARGETS:
        raise EaqError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "float" and not sequential:
        raise EaqError("target=float needs sequential=true (each layer's quantized inputs)")
    if percdamp <= 0:
        raise EaqError(f"percdamp must be > 0 (a fraction of the mean diagonal), got {percdamp}")
    if block_columns < 1:
        raise EaqError(f"block_columns must be >= 1, got {block_columns}")


@register_method(
    "gptq",
    "BatchNorm folding, GPTQ weight rounding (Frantar et al. 2022), PTQ activations, "
    "optionally bias correction",
    check=_check,
    needs=("weights",),
)
def gptq(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    percdamp: float = 0.01,
    block_columns: int = 128,
    act_order: bool = True,
    sequential: bool = True,
    target: str = "quantized",
    bias_correction: bool = False,
) -> QuantSummary:
    fold_batchnorm_(model)
    reference = copy.deepcopy(model).eval() if target == "float" or bias_correction else None
    float_model = reference if target == "float" else None
    summary = quantize_(model, plan)
    if act_order and any(isinstance(c.granularity, PerGroup) for c in plan.configs()):
        raise EaqError(
            "gptq: act_order does not combine with per-group weights; pass act_order=false"
        )
    gptq_(
        model,
        calib,
        sequential=sequential,
        float_model=float_model,
        percdamp=percdamp,
        block_columns=block_columns,
        act_order=act_order,
    )
    if bias_correction:
        bias_correct_(model, reference, calib)
    return summary
