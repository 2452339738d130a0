"""Block reconstruction: BRECQ (Li et al., ICLR 2021) and its QDrop variant (Wei et al., ICLR 2022).

BRECQ ("Pushing the Limit of Post-Training Quantization by Block Reconstruction",
arXiv:2102.05426) learns the AdaRound variables of every weight in a residual block jointly, so
that the *block* output matches the float block's, and optionally the activation step sizes
(LSQ-style: ``x_hat = s * (clamp(round_ste(x / s) + z, qmin, qmax) - z)``, gradients to ``s``
through the straight-through rounding). QDrop ("QDrop: Randomly Dropping Quantization for
Extremely Low-bit Post-Training Quantization", arXiv:2203.05740) additionally, during
reconstruction only, keeps each activation element in float with probability 0.5.

Units, in module order (:func:`reconstruction_units`): every residual block
(:data:`eaq.models.blocks.BLOCK_TYPES`) and, as single layers, every quantized conv/linear
outside a block (the stem and the head).

Per unit: the **target** is the float unit's output on the float model's input to it; the
**input** is what the quantized model feeds it (every earlier unit already reconstructed). The
loss is AdaRound's (:mod:`eaq.methods.adaround`): output error summed over channels plus the
annealed rounding regulariser; a block's output is taken after its last activation, and a single
layer's after the activation function it feeds (the stem's ReLU), as in the papers. The
activation quantizers inside the unit (the input quantizer of each conv/linear, including the
unit's first, which quantizes the unit input, and the attention matmuls' inputs) are wrapped
for the duration by :class:`ReconActQuantizer`; their learned step sizes are written back into
the :class:`~eaq.quant.Quantizer` buffers afterwards.

QDrop, as in its reference code: the unit input is the float input or the quantized-model input,
chosen per element with probability 0.5, and each activation quantizer in the unit passes each
element through unquantized with probability 0.5. Neither happens at inference.

Activations are first calibrated as in ``ptq``; weights start from their calibrated grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.adaround import (
    AdaRoundConfig,
    ReconstructionStats,
    _full_error,
    _log,
    attach_rounding_,
    bake_rounding_,
    capture_inputs,
    capture_io,
    following_activations,
    optimize_rounding_,
    prepare_,
    rounding_layers,
    rtn_error,
)
from eaq.methods.registry import Batches, register_method
from eaq.models.blocks import BLOCK_TYPES
from eaq.nn import QuantConv2d, QuantLinear, QuantSummary
from eaq.plan import Plan
from eaq.quant import NonUniformQuantizer, Quantizer

log = logging.getLogger(__name__)

__all__ = [
    "ReconActQuantizer",
    "ReconstructionConfig",
    "keep_mask",
    "lsq_fake_quantize",
    "reconstruct_",
    "reconstruct_unit_",
    "reconstruction_units",
    "brecq",
    "qdrop",
]


@dataclass(frozen=True)
class ReconstructionConfig:
    """Settings of block reconstruction.

    Attributes:
        rounding: AdaRound settings of each unit's optimisation (iterations, lr, schedule).
        learn_act_scale: Also learn the activation step sizes in the unit (LSQ-style).
        act_lr: Adam learning rate of the step sizes (4e-5, BRECQ's reference value).
        drop_prob: QDrop's probability of keeping an activation element in float (0: BRECQ).
    """

    rounding: AdaRoundConfig = field(default_factory=AdaRoundConfig)
    learn_act_scale: bool = True
    act_lr: float = 4e-5
    drop_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_prob < 1.0:
            raise EaqError(f"drop_prob must be in [0, 1), got {self.drop_prob}")
        if self.act_lr <= 0:
            raise EaqError(f"act_lr must be > 0, got {self.act_lr}")


def _round_ste(x: Tensor) -> Tensor:
    return (x.round() - x).detach() + x


class ReconActQuantizer(nn.Module):
    """Stands in for an activation :class:`Quantizer` during reconstruction.

    Fake-quantizes with the quantizer's zero point and range and a step size that can be learned
    (LSQ-style gradient through a straight-through round); with ``drop_prob > 0`` each element
    is passed through in float with that probability (QDrop).

    Args:
        quantizer: A calibrated activation quantizer (left untouched until :meth:`write_back`).
        learn_scale: Make the step size a parameter.
        drop_prob: QDrop's drop probability.
        generator: Source of QDrop's masks (CPU generator, for reproducibility).
    """

    def __init__(
        self,
        quantizer: Quantizer,
        learn_scale: bool,
        drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.quantizer = quantizer
        scale = quantizer.scale.detach().clone().float()
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", quantizer.zero_point.detach().clone().float())
        self.qmin, self.qmax = quantizer._qrange
        self.drop_prob = drop_prob
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        s = self.scale.clamp(min=1e-8)
        keep = None
        if self.drop_prob > 0:
            keep = keep_mask(x, self.drop_prob, self.generator)
        return lsq_fake_quantize(x, s, self.zero_point, self.qmin, self.qmax, keep)

    @torch.no_grad()
    def write_back(self) -> Quantizer:
        """Copy the (learned) step size into the quantizer and return it."""
        eps = torch.finfo(torch.float32).eps
        self.quantizer.scale.copy_(self.scale.detach().clamp(min=eps))
        return self.quantizer


KEEP_MASK_LEVELS = 1 << 16  # resolution of keep_mask's probability


def keep_mask(x: Tensor, prob: float, generator: torch.Generator | None) -> Tensor:
    """A float mask like ``x``: 1 (kept in float) with probability ``prob``, else 0.

    Each element compares a uniform 16-bit integer ``u`` in [0, 65536) with
    ``round(prob * 65536)``: ``prob`` to within 2**-17 (exact for QDrop's 0.5), from a quarter
    as many 64-bit draws as ``x`` has elements, which takes half the time of ``torch.rand``.
    """
    n = x.numel()
    words = torch.randint(
        -(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator
    )
    u = words.view(torch.int16)[:n]  # uniform in [-32768, 32768)
    threshold = round(prob * KEEP_MASK_LEVELS) - KEEP_MASK_LEVELS // 2
    mask = (u < threshold).to(x.dtype)
    # laid out as x is in memory (channels-last activations), so that mixing takes one pass
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    mask = mask.view([x.shape[d] for d in order]).permute([order.index(d) for d in range(x.dim())])
    return mask.to(x.device)


def lsq_fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    keep: Tensor | None = None,
) -> Tensor:
    """Fake-quantize ``x`` with a learnable step size (LSQ); elements where the float mask
    ``keep`` is 1 pass through unquantized (QDrop).

    ``scale`` and ``zero_point`` hold one value, or one per index of a single axis of ``x``
    (shaped to broadcast against it). The quantization is PyTorch's fused learnable fake
    quantize (``torch._fake_quantize_learnable_per_channel_affine``, gradient factor 1: to
    ``x`` straight through inside the range, to ``scale`` ``round(x/s) - x/s`` inside and the
    clamped code outside), on the last axis for a single value.
    """
    axes = [d for d, n in enumerate(scale.shape) if n > 1]
    if len(axes) > 1:
        raise EaqError(f"lsq_fake_quantize takes scales along one axis, got {tuple(scale.shape)}")
    if axes:
        axis = axes[0] + x.dim() - scale.dim()
        s, z = scale.reshape(-1), zero_point.reshape(-1).float()
    else:
        axis = x.dim() - 1
        s = scale.reshape(1).expand(x.shape[axis])
        z = zero_point.reshape(1).float().expand(x.shape[axis])
    out = torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, 1.0)
    return out if keep is None else torch.lerp(out, x, keep)  # exactly x where kept


def _act_quantizers(unit: nn.Module) -> list[tuple[str, Quantizer]]:
    """Enabled, calibrated uniform activation quantizers inside ``unit`` (all but weight
    quantizers; non-uniform ones, log2/twin, keep their calibrated parameters)."""
    return [
        (name, m)
        for name, m in unit.named_modules()
        if isinstance(m, Quantizer)
        and not isinstance(m, NonUniformQuantizer)
        and name.rpartition(".")[2] != "weight_quantizer"
        and m.enabled
        and m.is_calibrated
    ]


def reconstruction_units(model: nn.Module) -> list[str]:
    """Names of the units to reconstruct, in module order: blocks, then loose quantized layers.

    A block (:data:`~eaq.models.blocks.BLOCK_TYPES`) is a unit if it holds any quantizer; a
    quantized conv/linear outside every block is a unit of its own. Blocks nested in blocks are
    part of the outer one.
    """
    units: list[str] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, BLOCK_TYPES):
            inside.append(name)
            if any(isinstance(q, Quantizer) for q in m.modules()):
                units.append(name)
        elif isinstance(m, QuantConv2d | QuantLinear) and (
            m.weight_quantizer is not None or m.input_quantizer is not None
        ):
            units.append(name)
    return units


def reconstruct_unit_(
    unit: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    config: ReconstructionConfig,
    *,
    float_inputs: Tensor | None = None,
    name: str = "",
    activation: Callable[[Tensor], Tensor] | None = None,
) -> ReconstructionStats:
    """Reconstruct one quantized unit in place: learn its weights' rounding and act step sizes.

    Args:
        unit: A quantized block or layer (quantizers calibrated).
        inputs: The quantized model's inputs to it, ``[N, ...]``.
        targets: The float unit's outputs on the float inputs, ``[N, ...]``.
        config: Reconstruction settings.
        float_inputs: The float model's inputs (needed for QDrop's input mixing; ignored
            without QDrop).
        name: For the returned stats.
        activation: The activation function the unit's output goes into, applied before the
            error (``targets`` must already have it applied); None: the unit output itself.

    Returns:
        The unit-output error (on all cached samples, no QDrop) before and after.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(config.rounding.seed + 1)
    attached = attach_rounding_(m for _, m in rounding_layers(unit))
    wrapped = []
    for qname, quantizer in _act_quantizers(unit):
        w = ReconActQuantizer(quantizer, config.learn_act_scale, config.drop_prob, gen)
        if qname:
            unit.set_submodule(qname, w)
        wrapped.append((qname, w))
    try:
        drop = config.drop_prob
        for _, w in wrapped:
            w.drop_prob = 0.0
        before = rtn_error(unit, [ada for _, _, ada in attached], inputs, targets, activation)
        for _, w in wrapped:
            w.drop_prob = drop
        make_input = None
        if drop > 0 and float_inputs is not None:

            def make_input(idx: Tensor, g: torch.Generator) -> Tensor:
                xq, xf = inputs[idx], float_inputs[idx]
                return torch.lerp(xq, xf, keep_mask(xq, drop, g))  # exactly xf where kept

        extra = []
        if config.learn_act_scale and wrapped:
            extra.append(([w.scale for _, w in wrapped], config.act_lr))
        optimize_rounding_(
            unit,
            [ada for _, _, ada in attached],
            inputs,
            targets,
            config.rounding,
            extra_params=extra,
            make_input=make_input,
            activation=activation,
        )
    finally:
        for qname, w in wrapped:
            q = w.write_back()
            if qname:
                unit.set_submodule(qname, q)
        for layer, quantizer, ada in attached:
            bake_rounding_(layer, quantizer, ada)
    after = _full_error(unit, inputs, targets, activation)
    n_weights = sum(ada.w_floor.numel() for _, _, ada in attached)
    return ReconstructionStats(name, n_weights, before, after, time.perf_counter() - t0)


def reconstruct_(
    model: nn.Module,
    float_model: nn.Module,
    calib: Batches,
    config: ReconstructionConfig | None = None,
    *,
    verbose: bool = False,
) -> list[ReconstructionStats]:
    """Reconstruct every unit of a quantized, calibrated ``model``, in order.

    Args:
        model: The quantized model (quantizers calibrated).
        float_model: The float model it was made from (same module names).
        calib: Calibration batches of (inputs, labels).
        config: Settings (default BRECQ: learned step sizes, no QDrop).
        verbose: Log one line per unit to stderr.

    Returns:
        One :class:`ReconstructionStats` per unit.
    """
    config = config or ReconstructionConfig()
    model.eval()
    float_model.eval()
    stats = []
    tag = "qdrop" if config.drop_prob > 0 else "brecq"
    units = reconstruction_units(model)
    activations = following_activations(float_model, units)
    for name in units:
        inputs = capture_inputs(model, name, calib)
        float_inputs, targets = capture_io(float_model, name, calib)
        act = activations.get(name)
        if act is not None:
            targets = act(targets)
        row = reconstruct_unit_(
            model.get_submodule(name),
            inputs,
            targets,
            config,
            float_inputs=float_inputs,
            name=name,
            activation=act,
        )
        stats.append(row)
        if verbose:
            _log(row, tag)
    return stats


BRECQ_ITERS = 500  # per unit; a few minutes for ResNet-20 on a 2-core CPU
QDROP_PROB = 0.5


def _run(
    model: nn.Module, plan: Plan, calib: Batches, config: ReconstructionConfig
) -> QuantSummary:
    summary, float_model = prepare_(model, plan, calib)
    t0 = time.perf_counter()
    reconstruct_(model, float_model, calib, config, verbose=True)
    tag = "qdrop" if config.drop_prob > 0 else "brecq"
    log.info(f"{tag}: reconstruction done in {time.perf_counter() - t0:.1f}s")
    return summary


def _config(
    *, learn_act_scale: bool, act_lr: float, drop_prob: float, **rounding
) -> ReconstructionConfig:
    """The settings from a method's options; ``rounding``: :class:`AdaRoundConfig`'s fields."""
    return ReconstructionConfig(AdaRoundConfig(**rounding), learn_act_scale, act_lr, drop_prob)


@register_method(
    "brecq",
    "BatchNorm folding, PTQ activations, BRECQ block reconstruction (Li et al. 2021)",
    check=lambda **o: _config(**o, drop_prob=0.0) and None,
    needs=("weights",),
)
def brecq(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    iters: int = BRECQ_ITERS,
    lr: float = 1e-3,
    batch_size: int = 32,
    reg_weight: float = 0.01,
    warmup: float = 0.2,
    learn_act_scale: bool = True,
    act_lr: float = 4e-5,
    seed: int = 0,
    precision: str = "fp32",
) -> QuantSummary:
    """Options: ``iters`` Adam steps per unit, ``lr`` of the rounding variables, ``batch_size``
    samples per step, ``reg_weight`` and ``warmup`` of the rounding regulariser,
    ``learn_act_scale`` and ``act_lr`` of the activation step sizes, ``precision`` of the
    optimisation's forward and backward (``fp32``, or ``bf16`` autocast: faster where the CPU
    has AMX; see :class:`~eaq.methods.adaround.AdaRoundConfig`)."""
    config = _config(
        iters=iters,
        lr=lr,
        batch_size=batch_size,
        reg_weight=reg_weight,
        warmup=warmup,
        seed=seed,
        learn_act_scale=learn_act_scale,
        act_lr=act_lr,
        drop_prob=0.0,
        precision=precision,
    )
    return _run(model, plan, calib, config)


@register_method(
    "qdrop",
    "BRECQ block reconstruction with QDrop: activation quantization dropped at p=0.5 (Wei 2022)",
    check=lambda **o: _config(**o, learn_act_scale=True) and None,
    needs=("weights", "activations"),
)
def qdrop(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    iters: int = BRECQ_ITERS,
    lr: float = 1e-3,
    batch_size: int = 32,
    reg_weight: float = 0.01,
    warmup: float = 0.2,
    act_lr: float = 4e-5,
    drop_prob: float = QDROP_PROB,
    seed: int = 0,
    precision: str = "fp32",
) -> QuantSummary:
    """Options as :func:`brecq`'s (step sizes always learned), and ``drop_prob``."""
    config = _config(
        iters=iters,
        lr=lr,
        batch_size=batch_size,
        reg_weight=reg_weight,
        warmup=warmup,
        seed=seed,
        learn_act_scale=True,
        act_lr=act_lr,
        drop_prob=drop_prob,
        precision=precision,
    )
    return _run(model, plan, calib, config)
