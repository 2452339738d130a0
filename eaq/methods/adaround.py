"""AdaRound: learned rounding of the weights, layer by layer (Nagel et al., ICML 2020).

"Up or Down? Adaptive Rounding for Post-Training Quantization" (arXiv:2004.10568). Each weight
``w`` on the grid of its (already calibrated) quantizer, with scale ``s`` and zero point ``z``,
is rounded up or down by a learned soft variable::

    h(V)   = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)       zeta = 1.1, gamma = -0.1
    w_soft = s * (clamp(floor(w / s) + h(V) + z, qmin, qmax) - z)

``V`` starts where ``h(V)`` equals the fractional part of ``w / s`` (so ``w_soft == w`` inside
the range). The loss of one layer is the output reconstruction error plus a regulariser that
pushes every ``h`` to 0 or 1::

    loss = mean_over(N, H, W) sum_over(C) (f(W_fp x_fp) - f(W_soft Q(x_q)))^2
           + lambda * sum(1 - |2 h(V) - 1|^beta)

where ``f`` is the activation function the layer's output goes into (ReLU, ReLU6 or GELU,
found on the model's graph after BatchNorm folding; the identity where there is none), with
``beta`` annealed linearly from 20 to 2 after a warm-up (the first 20% of the iterations)
without the regulariser, Adam at lr 1e-3, then hard rounding (``h >= 0.5``).

Which inputs and targets (the paper's "asymmetric" reconstruction, as in its Sec. 5 and in
BRECQ's reference code): the **target** is the float layer's output on the float model's input
to that layer; the **input** is what the quantized model feeds the layer, with every earlier
layer already AdaRounded and every activation quantizer on (the layer's own input quantizer
included: ``Q(x_q)``). The activation quantizers are calibrated first, exactly as in ``ptq``
(observers on float activations); their parameters are not changed.

Afterwards the learned rounding is baked into the float weight (``weight = s * (q - z)``) and
the layer keeps its plain :class:`~eaq.quant.Quantizer`, which reproduces that weight exactly.

:class:`AdaRoundWeight` and the optimisation loop :func:`optimize_rounding_` are shared with
block reconstruction (:mod:`eaq.methods.reconstruction`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.methods.folding import QuantLeafTracer, fold_batchnorm_
from eaq.methods.registry import Batches, register_method
from eaq.nn import QuantConv2d, QuantLinear, QuantSummary, calibrate_, quantize_
from eaq.nn.hooks import layer_calls
from eaq.plan import Plan
from eaq.quant import Quantizer

log = logging.getLogger(__name__)

__all__ = [
    "GAMMA",
    "ZETA",
    "AdaRoundConfig",
    "AdaRoundWeight",
    "ReconstructionStats",
    "adaround_",
    "bake_rounding_",
    "capture_inputs",
    "capture_io",
    "following_activations",
    "optimize_rounding_",
    "prepare_",
    "rtn_error",
    "rounding_layers",
]

PRECISIONS = ("fp32", "bf16")
ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (Nagel et al. 2020, Sec. 4.1)


@dataclass(frozen=True)
class AdaRoundConfig:
    """Settings of one rounding optimisation (per layer for AdaRound, per block for BRECQ).

    Attributes:
        iters: Adam steps per layer/block.
        batch_size: Calibration samples per step (drawn with replacement from the cached set).
        lr: Adam learning rate of the rounding variables ``V``.
        reg_weight: ``lambda`` of the rounding regulariser (0.01 as in the reference code).
        beta_start: ``beta`` at the end of the warm-up.
        beta_end: ``beta`` at the last iteration.
        warmup: Fraction of the iterations without the regulariser.
        seed: Seed of the sample draws (and of QDrop's masks).
        precision: ``"fp32"``, or ``"bf16"``: the unit's forward and backward during the
            optimisation run under bfloat16 autocast (convolutions and matrix products in
            bfloat16, on AMX where the CPU has it); the loss, the errors reported before and
            after, and the final weights stay float32.
    """

    iters: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EaqError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.iters < 1 or self.batch_size < 1:
            raise EaqError(
                f"iters and batch_size must be >= 1, got {self.iters}, {self.batch_size}"
            )
        if not 0.0 <= self.warmup < 1.0:
            raise EaqError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.lr <= 0 or self.reg_weight < 0:
            raise EaqError(f"lr must be > 0 and reg_weight >= 0, got {self.lr}, {self.reg_weight}")

    def beta(self, step: int) -> float | None:
        """``beta`` at ``step`` (0-based), or None during the warm-up (no regulariser)."""
        start = int(self.warmup * self.iters)
        if step < start:
            return None
        rel = (step - start) / max(1, self.iters - 1 - start)
        return self.beta_end + (self.beta_start - self.beta_end) * max(0.0, 1.0 - rel)


def _expand(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Broadcast a keepdim per-block tensor to ``shape`` (per-group scales repeat along axis)."""
    if t.ndim == 0:
        return t.expand(shape).clone()
    for dim, (n, size) in enumerate(zip(t.shape, shape, strict=True)):
        if n not in (1, size):
            t = t.repeat_interleave(size // n, dim=dim)
    return t.expand(shape).clone()


class AdaRoundWeight(nn.Module):
    """Stands in for a layer's weight :class:`Quantizer` while its rounding is learned.

    On forward it ignores its input (the layer's float weight, fixed when it was built) and
    returns the soft-quantized weight (or, after :meth:`harden`, the hard-rounded one). Scale,
    zero point and integer range are the calibrated quantizer's.

    Args:
        weight: The float weight.
        quantizer: The layer's calibrated weight quantizer.
    """

    def __init__(self, weight: Tensor, quantizer: Quantizer) -> None:
        super().__init__()
        if not quantizer.is_calibrated:
            raise EaqError("AdaRoundWeight needs a calibrated weight quantizer")
        w = weight.detach().float()
        scale = _expand(quantizer.scale.detach().float(), w.shape)
        zero = _expand(quantizer.zero_point.detach().float(), w.shape)
        ratio = w * torch.reciprocal(scale)  # as fake_quantize computes it
        floor = torch.floor(ratio)
        frac = (ratio - floor).clamp(0.0, 1.0)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)
        self.register_buffer("w_floor", floor)
        self.qmin, self.qmax = quantizer._qrange
        # h(V) = frac  <=>  sigmoid(V) = (frac - gamma) / (zeta - gamma)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0))
        self.hard = False

    def h(self) -> Tensor:
        """The rectified sigmoid ``h(V)`` in [0, 1]."""
        return (torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def rounding(self) -> Tensor:
        """The hard rounding: 1 (round up) where ``h(V) >= 0.5``, else 0."""
        return (self.h() >= 0.5).to(self.w_floor.dtype)

    def codes(self) -> Tensor:
        """Integer codes of the hard-rounded weight (``q``, zero point included)."""
        q = self.w_floor + self.rounding().detach() + self.zero_point
        return q.clamp(self.qmin, self.qmax)

    def regularizer(self, beta: float) -> Tensor:
        """``sum(1 - |2 h(V) - 1|^beta)``: 0 once every ``h`` is 0 or 1."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()

    def harden(self) -> None:
        """Use hard rounding from now on (forward returns the final weight)."""
        self.hard = True

    def forward(self, weight: Tensor) -> Tensor:
        r = self.rounding() if self.hard else self.h()
        q = torch.clamp(self.w_floor + r + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point) * self.scale).to(weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"shape={list(self.w_floor.shape)}, range=[{self.qmin}, {self.qmax}], hard={self.hard}"
        )


def rounding_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of the quantized conv/linear layers in ``module`` with a weight quantizer
    that is enabled and calibrated (the ones whose rounding can be learned), in module order."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear)
        and isinstance(m.weight_quantizer, Quantizer)
        and m.weight_quantizer.enabled
        and m.weight_quantizer.is_calibrated
    ]


def attach_rounding_(
    layers: Iterable[nn.Module],
) -> list[tuple[nn.Module, Quantizer, AdaRoundWeight]]:
    """Swap an :class:`AdaRoundWeight` in for each layer's weight quantizer."""
    attached = []
    for layer in layers:
        quantizer = layer.weight_quantizer
        ada = AdaRoundWeight(layer.weight, quantizer).to(layer.weight.device)
        layer.weight_quantizer = ada
        attached.append((layer, quantizer, ada))
    return attached


@torch.no_grad()
def bake_rounding_(layer: nn.Module, quantizer: Quantizer, ada: AdaRoundWeight) -> None:
    """Write the hard-rounded weight into ``layer.weight`` and put ``quantizer`` back.

    The quantizer keeps its scale and zero point, so ``quantizer(layer.weight)`` is exactly the
    learned weight (the weight already lies on its grid).
    """
    ada.harden()
    layer.weight.copy_(ada(layer.weight))
    layer.weight_quantizer = quantizer


@torch.no_grad()
def capture_inputs(model: nn.Module, name: str, calib: Batches) -> Tensor:
    """The input of submodule ``name`` over all calibration batches, concatenated."""
    return torch.cat([args[0] for args, _ in layer_calls(model, name, (x for x, _ in calib))])


@torch.no_grad()
def capture_io(model: nn.Module, name: str, calib: Batches) -> tuple[Tensor, Tensor]:
    """Input and output of submodule ``name`` over all calibration batches, concatenated."""
    calls = layer_calls(model, name, (x for x, _ in calib), with_output=True)
    return torch.cat([args[0] for args, _ in calls]), torch.cat([out for _, out in calls])


_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU)
_ACTIVATION_FUNCTIONS = {F.relu: F.relu, torch.relu: F.relu, F.relu6: F.relu6, F.gelu: F.gelu}


def following_activations(model: nn.Module, names: Iterable[str]) -> dict[str, Callable]:
    """The activation function applied to each named layer's output, where there is one.

    A layer's output must reach the activation alone (one user), through nothing but
    ``nn.Identity`` (a folded BatchNorm): ``relu(bn(conv(x)))`` after folding. Layers with no
    such activation, or a model ``torch.fx`` cannot trace, are left out (their loss is on the
    layer output itself).
    """
    wanted = set(names)
    try:
        graph = QuantLeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure: no activations known
        log.info("the model could not be traced; reconstruction losses on layer outputs")
        return {}
    modules = dict(model.named_modules())
    found: dict[str, Callable] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        n = node
        while len(n.users) == 1:
            (user,) = n.users
            target = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(target, nn.Identity):
                n = user
                continue
            if isinstance(target, _ACTIVATION_MODULES):
                found[node.target] = target
            elif user.op == "call_function" and user.target in _ACTIVATION_FUNCTIONS:
                if len(user.args) == 1 and not user.kwargs:
                    found[node.target] = _ACTIVATION_FUNCTIONS[user.target]
            break
    return found


def reconstruction_error(out: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over the channel dim (dim 1), averaged over the rest."""
    err = (out - target).pow(2)
    return err.sum(1).mean() if err.ndim > 1 else err.mean()


@dataclass(frozen=True)
class ReconstructionStats:
    """Outcome of one optimisation: output error with round-to-nearest weights (and the
    calibrated step sizes) before, and with the learned rounding (and step sizes) after."""

    name: str
    n_weights: int
    error_before: float
    error_after: float
    seconds: float


def rtn_error(
    unit: nn.Module,
    rounders: Sequence[AdaRoundWeight],
    inputs: Tensor,
    targets: Tensor,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Unit-output error with round-to-nearest weights (the rounders' initial hard rounding)."""
    for r in rounders:
        r.harden()
    try:
        return _full_error(unit, inputs, targets, activation)
    finally:
        for r in rounders:
            r.hard = False


@torch.no_grad()
def _full_error(
    unit: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    activation: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 256,
) -> float:
    total = 0.0
    for i in range(0, inputs.shape[0], chunk):
        out = unit(inputs[i : i + chunk])
        if activation is not None:
            out = activation(out)
        total += float(reconstruction_error(out, targets[i : i + chunk])) * out.shape[0]
    return total / inputs.shape[0]


def optimize_rounding_(
    unit: nn.Module,
    rounders: Sequence[AdaRoundWeight],
    inputs: Tensor,
    targets: Tensor,
    config: AdaRoundConfig,
    *,
    extra_params: Sequence[tuple[list[nn.Parameter], float]] = (),
    make_input: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Learn the rounding variables of ``rounders`` (already attached inside ``unit``).

    Minimises ``reconstruction_error(unit(x), target) + lambda * sum(regularizer(beta))`` with
    Adam. Every other parameter of ``unit`` is frozen for the duration.

    Args:
        unit: A layer or a block whose forward uses the attached :class:`AdaRoundWeight` s.
        rounders: The rounding modules to learn.
        inputs: Cached inputs of ``unit``, ``[N, ...]``.
        targets: Cached target outputs, ``[N, ...]``.
        config: Iterations, batch size, learning rate, regulariser schedule.
        extra_params: ``(params, lr)`` groups learned alongside (e.g. activation step sizes).
        make_input: ``make_input(idx, generator)`` returns the batch input for sample indices
            ``idx`` (QDrop mixes float and quantized inputs); default ``inputs[idx]``.
        activation: applied to ``unit``'s output before the error (the papers' loss after
            the activation function); ``targets`` must already have it applied.
    """
    frozen = [(p, p.requires_grad) for p in unit.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    learn = [r.alpha for r in rounders]
    for p in learn:
        p.requires_grad_(True)
    groups = [{"params": learn, "lr": config.lr}] if learn else []
    for params, lr in extra_params:
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": list(params), "lr": lr})
    if not groups:
        return
    opt = torch.optim.Adam(groups)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    n = inputs.shape[0]
    bf16 = config.precision == "bf16"
    try:
        with torch.enable_grad():
            for step in range(config.iters):
                idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
                x = make_input(idx, gen) if make_input is not None else inputs[idx]
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = unit(x)
                out = out.float()
                if activation is not None:
                    out = activation(out)
                loss = reconstruction_error(out, targets[idx])
                beta = config.beta(step)
                if beta is not None and config.reg_weight > 0 and rounders:
                    loss = loss + config.reg_weight * sum(r.regularizer(beta) for r in rounders)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        for r in rounders:
            r.alpha.requires_grad_(False)


def prepare_(model: nn.Module, plan: Plan, calib: Batches) -> tuple[QuantSummary, nn.Module]:
    """Fold BatchNorm, keep a float copy, quantize with ``plan`` and calibrate as ``ptq`` does."""
    if not calib:
        raise EaqError("the calibration set is empty")
    model.eval()
    fold_batchnorm_(model)
    float_model = copy.deepcopy(model).eval()
    summary = quantize_(model, plan)
    calibrate_(model, calib)
    return summary, float_model


def adaround_(
    model: nn.Module,
    float_model: nn.Module,
    calib: Batches,
    config: AdaRoundConfig | None = None,
    *,
    verbose: bool = False,
) -> list[ReconstructionStats]:
    """AdaRound every weight-quantized conv/linear layer of a quantized, calibrated ``model``.

    Layers are done in module order; each one's input comes from ``model`` as it stands (earlier
    layers already rounded), its target from the same-named layer of ``float_model``. Where
    the layer's output goes straight into an activation function (after BatchNorm folding),
    the loss is on the activation's output, as in the paper (its Eq. 25).

    Args:
        model: The quantized model (weight and activation quantizers calibrated).
        float_model: The float model it was made from (same module names).
        calib: Calibration batches of (inputs, labels).
        config: Optimisation settings (default :class:`AdaRoundConfig`).
        verbose: Log one line per layer to stderr.

    Returns:
        One :class:`ReconstructionStats` per layer.
    """
    config = config or AdaRoundConfig()
    model.eval()
    float_model.eval()
    stats = []
    layers = rounding_layers(model)
    activations = following_activations(float_model, [name for name, _ in layers])
    for name, layer in layers:
        t0 = time.perf_counter()
        act = activations.get(name)
        inputs = capture_inputs(model, name, calib)
        _, targets = capture_io(float_model, name, calib)
        if act is not None:
            targets = act(targets)
        [(layer_, quantizer, ada)] = attach_rounding_([layer])
        before = rtn_error(layer, [ada], inputs, targets, act)
        optimize_rounding_(layer, [ada], inputs, targets, config, activation=act)
        bake_rounding_(layer_, quantizer, ada)
        after = _full_error(layer, inputs, targets, act)
        row = ReconstructionStats(
            name, ada.w_floor.numel(), before, after, time.perf_counter() - t0
        )
        stats.append(row)
        if verbose:
            _log(row, "adaround")
    return stats


def _log(row: ReconstructionStats, tag: str) -> None:
    gain = row.error_after / row.error_before if row.error_before > 0 else math.nan
    log.info(
        f"{tag}: {row.name}: error {row.error_before:.4g} -> {row.error_after:.4g} "
        f"(x{gain:.2f}) in {row.seconds:.1f}s"
    )


ADAROUND_ITERS = 1000  # per layer; ResNet-20 W4A4: ~200 s single-threaded on a loaded 2-core CPU


@register_method(
    "adaround",
    "BatchNorm folding, PTQ activations, AdaRound learned weight rounding (Nagel et al. 2020)",
    check=lambda **o: AdaRoundConfig(**o) and None,
    needs=("weights",),
)
def adaround(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    iters: int = ADAROUND_ITERS,
    lr: float = 1e-3,
    batch_size: int = 32,
    reg_weight: float = 0.01,
    warmup: float = 0.2,
    seed: int = 0,
    precision: str = "fp32",
) -> QuantSummary:
    """Options: ``iters`` Adam steps per layer, ``lr``, ``batch_size``, ``reg_weight`` and
    ``warmup`` of the rounding regulariser, ``precision`` (``fp32`` or ``bf16``; see
    :class:`AdaRoundConfig`)."""
    config = AdaRoundConfig(
        iters=iters,
        batch_size=batch_size,
        lr=lr,
        reg_weight=reg_weight,
        warmup=warmup,
        seed=seed,
        precision=precision,
    )
    summary, float_model = prepare_(model, plan, calib)
    t0 = time.perf_counter()
    adaround_(model, float_model, calib, config, verbose=True)
    _log_total("adaround", t0)
    return summary


def _log_total(tag: str, t0: float) -> None:
    log.info(f"{tag}: rounding learned in {time.perf_counter() - t0:.1f}s")
