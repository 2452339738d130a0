"""Per-layer quantization sensitivity, for each candidate ``(w_bits, a_bits)``.

Three measures:

``l2`` (the seed's eq. 5, the default)
    ``S_l(c) = ||y_l^full - y_l^quant(c)||_2`` over the calibration set, where ``y_l^quant``
    is layer ``l`` alone, weight and input fake-quantized at candidate ``c``, computed on the
    *float* input that the layer sees in the float model. Cost: one float pass to calibrate
    the input ranges (one observer per layer, shared by all widths), then one float pass with
    hooks that, per batch and layer, run the layer once per candidate and accumulate the squared
    error; no activation is kept beyond its batch: ``2 + C`` forward passes for ``C`` candidates
    done in full, never a model pass per layer. To keep that near three passes the
    candidates are re-run on part of the data and the sum scaled up (:func:`_rerun_rows`): on
    every fourth token row of a token input (a ViT's Linear layers and attention matmuls; within
    0.4% of the full sum on deit_tiny_cifar), else on every third image of each batch.
``kl``
    ``KL(softmax(z_full) || softmax(z_quant))`` of the logits with only layer ``l`` quantized at
    ``c`` (everything else float): one model pass per layer and candidate, so use it on a few
    calibration images. Each pass starts at the layer's residual block: the float outputs of
    the blocks before it are recorded once and replayed (:class:`~eaq.nn.hooks.PrefixReplay`),
    which halves the cost on a ResNet or ViT and changes no value.
``nuclear`` (feature diversity, Liu et al., "Post-Training Quantization for Vision
Transformer", NeurIPS 2021, Sec. 3.4)
    The layer's quantization error weighted by the nuclear norm (sum of singular values) of its
    float output, the paper's measure of a layer's feature diversity::

        S_l(c) = mean_i ||Y_l,i||_*  *  mean_i ||Y_l,i - Y_l,i^quant(c)||_F^2

    over calibration images ``i``, where ``Y_l,i`` is image ``i``'s output as a matrix
    (:func:`output_nuclear_norm`: ``[tokens, channels]`` for a linear, ``[HW, C]`` for a conv,
    one ``[N, M]`` matrix per head for a matmul, summed over heads) and the error is the ``l2``
    measure's (same single-layer quantization on float inputs). The paper ranks layers for
    mixed precision by ``sum_j sigma_j(Y) * ||Y_hat - Y||^2``; the per-image means make the value
    independent of the calibration-set size. The SVDs (``torch.linalg.svdvals``, batched over
    images) run in the ``l2`` measure's second pass: about the same cost.

Attention matmuls (Q*K^T, softmax*V) are measured like the other layers: the model is copied
and its attention modules are made explicit (:class:`~eaq.nn.QuantMatMul`, unquantized).

Examples:
    >>> from eaq.models import create_model
    >>> _ = torch.manual_seed(0)
    >>> model = create_model("resnet20_cifar")
    >>> calib = [(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]
    >>> s = layer_sensitivity(model, calib, [(4, 4), (8, 8)])
    >>> s.values.shape == (len(s.names), 2) and bool((s.values[:, 0] >= s.values[:, 1]).all())
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eaq.errors import EaqError, choices_hint
from eaq.models.blocks import outer_blocks
from eaq.nn import check_plan, input_roles, quantizable_layers, quantize_, quantized_layer
from eaq.nn.hooks import PrefixReplay, hooks_on, layer_calls
from eaq.plan import LayerConfig, Plan
from eaq.quant import Quantizer, calibration

MEASURES = ("l2", "kl", "nuclear")
Candidate = tuple[int, int]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Sensitivity:
    """Sensitivity of each layer (rows, in :func:`~eaq.nn.quantizable_layers` order) to each
    candidate ``(w_bits, a_bits)`` (columns).

    Attributes:
        names: layer names.
        kinds: layer kinds (conv, linear, matmul).
        candidates: the ``(w_bits, a_bits)`` columns.
        values: ``[L, C]`` float64 array.
        measure: ``l2``, ``kl`` or ``nuclear``.
        n_images: calibration images used.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    values: np.ndarray
    measure: str
    n_images: int

    def column(self, candidate: Candidate) -> np.ndarray:
        """The sensitivity of every layer at one candidate."""
        try:
            return self.values[:, self.candidates.index(tuple(candidate))]
        except ValueError:
            raise EaqError(
                f"no sensitivity measured for W{candidate[0]}A{candidate[1]}; measured: "
                + ", ".join(f"W{w}A{a}" for w, a in self.candidates)
            ) from None

    def to_rows(self) -> list[dict]:
        """One dict per (layer, candidate)."""
        return [
            {
                "layer": name,
                "kind": kind,
                "index": i,
                "w_bits": w,
                "a_bits": a,
                "value": float(self.values[i, j]),
                "measure": self.measure,
            }
            for i, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True))
            for j, (w, a) in enumerate(self.candidates)
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[dict], n_images: int = 0) -> Sensitivity:
        """Inverse of :meth:`to_rows`."""
        layers = sorted({(r["index"], r["layer"], r["kind"]) for r in rows})
        cands = sorted({(r["w_bits"], r["a_bits"]) for r in rows})
        values = np.full((len(layers), len(cands)), np.nan)
        for r in rows:
            values[r["index"], cands.index((r["w_bits"], r["a_bits"]))] = r["value"]
        return cls(
            names=tuple(n for _, n, _ in layers),
            kinds=tuple(k for _, _, k in layers),
            candidates=tuple(cands),
            values=values,
            measure=rows[0]["measure"] if rows else "l2",
            n_images=n_images,
        )


def candidate_grid(w_bits: Sequence[int], a_bits: Sequence[int] | None = None) -> list[Candidate]:
    """Candidates from width sets: ``W=A`` pairs when ``a_bits`` is None, else all pairs."""
    if a_bits is None:
        return [(int(b), int(b)) for b in sorted(set(w_bits))]
    return [(int(w), int(a)) for w in sorted(set(w_bits)) for a in sorted(set(a_bits))]


def _explicit_copy(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose attention matmuls are modules (no quantizer anywhere)."""
    model = copy.deepcopy(model).eval()
    quantize_(model, Plan(default=None, first_last_8bit=False))
    return model


def _input_quantizers(base: LayerConfig, a_bits: set[int], observer) -> dict[int, Quantizer]:
    out = {}
    for b in sorted(a_bits):
        q = Quantizer(replace(base, a_bits=b).act_spec())
        q.observer = copy.deepcopy(observer)
        q.calibrating = True
        q.finish_calibration()
        out[b] = q
    return out


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    calib: Batches,
    candidates: Sequence[Candidate],
    *,
    base: LayerConfig | None = None,
    measure: str = "l2",
    progress: bool = False,
) -> Sensitivity:
    """Sensitivity of every quantizable layer of a float ``model`` to every candidate.

    Args:
        model: a float model (left unchanged).
        calib: calibration batches of ``(images, labels)``; iterated twice (``l2``,
            ``nuclear``) or ``1 + L * C`` times (``kl``).
        candidates: ``(w_bits, a_bits)`` pairs.
        base: the other quantization settings (granularity, observers, symmetric); default
            :class:`~eaq.plan.LayerConfig`'s (per-channel weights, min-max, symmetric).
        measure: ``l2`` (seed eq. 5, layer-local), ``kl`` (end-to-end logits) or ``nuclear``
            (``l2``'s squared error times the output's nuclear norm, Liu et al. 2021).
        progress: show a progress bar.
    """
    if measure not in MEASURES:
        raise EaqError(f"unknown sensitivity measure {measure!r}; {choices_hint(MEASURES)}")
    candidates = [tuple(int(b) for b in c) for c in candidates]
    if not candidates:
        raise EaqError("no candidate widths for the sensitivity")
    base = base or LayerConfig()
    for w, a in candidates:
        replace(base, w_bits=w, a_bits=a)  # EaqError for bad widths
    calib = list(calib)
    if measure == "kl":
        return _kl_sensitivity(model, calib, candidates, base, progress)
    return _l2_sensitivity(model, calib, candidates, base, progress, measure)


def output_nuclear_norm(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image nuclear norm of a layer output ``y`` (batch first), shape ``[B]``, float64.

    The matrix of one image: ``[H*W, C]`` for a conv output ``[B, C, H, W]``; ``[tokens, C]``
    for a linear output ``[B, ..., C]`` (``[1, C]`` for ``[B, C]``: the vector's norm); for a
    matmul output ``[B, ..., N, M]`` one ``[N, M]`` matrix per leading index (head), summed.

    Examples:
        >>> y = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])
        >>> output_nuclear_norm(y, "linear")
        tensor([7.], dtype=torch.float64)
    """
    b = y.shape[0]
    if kind == "conv":
        mats = y.reshape(b, y.shape[1], -1).transpose(1, 2)
    elif kind == "matmul":
        mats = y.reshape(-1, *y.shape[-2:])
    else:
        mats = y.reshape(b, -1, y.shape[-1])
    sv = torch.linalg.svdvals(mats.float()).double().sum(-1)
    return sv.reshape(b, -1).sum(1)


def _l2_sensitivity(model, calib, candidates, base, progress, measure="l2") -> Sensitivity:
    work = _explicit_copy(model)
    refs = quantizable_layers(work)
    modules = {ref.name: work.get_submodule(ref.name) for ref in refs}
    a_set = {a for _, a in candidates}
    w_set = {w for w, _ in candidates}

    # Pass 1: one activation observer per layer input (both inputs of a matmul).
    observers: dict[tuple[str, int], object] = {}
    for ref in refs:
        for k in range(2 if ref.kind == "matmul" else 1):
            q = Quantizer(base.act_spec())
            q.start_calibration()
            observers[(ref.name, k)] = q

    def observe_hook(name, n_inputs):
        def hook(module, inputs):
            for k in range(n_inputs):
                observers[(name, k)](inputs[k])

        return hook

    n_images = 0
    observe = [
        (modules[r.name], observe_hook(r.name, 2 if r.kind == "matmul" else 1)) for r in refs
    ]
    with hooks_on(observe, pre=True):
        for images, _ in calib:
            work(images)
            n_images += images.shape[0]
    if n_images == 0:
        raise EaqError("the calibration set is empty")
    in_q = {key: _input_quantizers(base, a_set, obs.observer) for key, obs in observers.items()}
    w_q: dict[tuple[str, int], torch.Tensor] = {}
    for ref in refs:
        if ref.kind == "matmul":
            continue
        weight = modules[ref.name].weight
        for w in w_set:
            w_q[(ref.name, w)] = Quantizer(replace(base, w_bits=w).weight_spec()).calibrate_(
                weight
            )(weight)

    # Pass 2: float pass; each layer re-run alone per candidate on its float input.
    sq = np.zeros((len(refs), len(candidates)))
    nuclear = np.zeros(len(refs))

    def error_hook(i, ref):
        module = modules[ref.name]

        def hook(mod, inputs, output):
            if measure == "nuclear":
                nuclear[i] += float(output_nuclear_norm(output, ref.kind).sum())
            x_in, output, scale = _rerun_rows(ref.kind, inputs[0], output)
            for j, (w, a) in enumerate(candidates):
                if ref.kind == "matmul":
                    y = in_q[(ref.name, 0)][a](x_in) @ in_q[(ref.name, 1)][a](inputs[1])
                else:
                    x = in_q[(ref.name, 0)][a](x_in)
                    if isinstance(module, nn.Conv2d):
                        y = module._conv_forward(x, w_q[(ref.name, w)], module.bias)
                    else:
                        y = F.linear(x, w_q[(ref.name, w)], module.bias)
                d = (y - output).flatten()
                sq[i, j] += scale * float(d @ d)

        return hook

    with hooks_on([(modules[r.name], error_hook(i, r)) for i, r in enumerate(refs)]):
        for images, _ in _bar(calib, progress, "sensitivity"):
            work(images)
    if measure == "nuclear":
        values = (nuclear / n_images)[:, None] * (sq / n_images)
    else:
        values = np.sqrt(sq)
    return Sensitivity(
        names=tuple(r.name for r in refs),
        kinds=tuple(r.kind for r in refs),
        candidates=tuple(candidates),
        values=values,
        measure=measure,
        n_images=n_images,
    )


TOKEN_STRIDE = 4
"""Token inputs (``[..., N, C]`` with ``N >= MIN_TOKENS``) are re-run on every 4th token row."""
MIN_TOKENS = 16
IMAGE_STRIDE = 3
"""Other inputs of convolutions and Linear layers are re-run on every 3rd image of a batch."""


def _rerun_rows(kind: str, x: torch.Tensor, output: torch.Tensor):
    """The part of a layer's input (and of its output) that the candidates are re-run on.

    A Linear layer or an attention matmul treats each token row (``x[..., n, :]``) alone, a
    convolution or a Linear layer each image alone, and a per-tensor activation quantizer uses
    one calibrated scale; so re-running a candidate on every ``TOKEN_STRIDE``-th token row, or
    else on every ``IMAGE_STRIDE``-th image of the batch, gives exactly those rows of the full
    output. The squared error summed over them, times ``all / kept``, estimates the full sum:
    this keeps the cost of the sensitivity near three forward passes (one to calibrate the input
    ranges, one float pass, the candidates on a third or a quarter of the data). Attention
    matmuls on fewer than ``MIN_TOKENS`` tokens are used whole.

    Returns:
        ``(x_rows, output_rows, scale)``.
    """
    if kind != "conv" and x.dim() >= 3 and x.shape[-2] >= MIN_TOKENS:
        n = x.shape[-2]
        rows = slice(0, None, TOKEN_STRIDE)
        return x[..., rows, :], output[..., rows, :], n / len(range(n)[rows])
    if kind == "matmul":  # slicing images would have to slice its second input too: whole
        return x, output, 1.0
    b = x.shape[0]
    rows = slice(0, None, IMAGE_STRIDE)
    return x[rows], output[rows], b / len(range(b)[rows])


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False)


def _kl_sensitivity(model, calib, candidates, base, progress) -> Sensitivity:
    work = _explicit_copy(model)
    refs = quantizable_layers(work)
    images = [x for x, _ in calib]
    n_images = sum(x.shape[0] for x in images)
    if n_images == 0:
        raise EaqError("the calibration set is empty")
    # one float pass records the logits and every block's output: a pass with one layer
    # quantized replays the blocks that end before that layer instead of computing them
    replay = PrefixReplay.record(work, outer_blocks(work), images)
    ref_logp = [F.log_softmax(z.double(), dim=1) for z in replay.model_outputs]
    values = np.zeros((len(refs), len(candidates)))
    jobs = [(i, j) for i in range(len(refs)) for j in range(len(candidates))]
    roles = input_roles(model)
    layer_inputs: tuple[int, list] = (-1, [])
    for i, j in _bar(jobs, progress, "sensitivity (kl)"):
        ref = refs[i]
        w, a = candidates[j]
        one = Plan(default=None, rules=((ref.name, replace(base, w_bits=w, a_bits=a)),))
        cfg = check_plan(model, replace(one, first_last_8bit=False))[ref.name]
        # the float copy with this one layer swapped for its quantized twin, as quantize_
        # would make it from the plan `one`; the float layer goes back afterwards
        float_layer = work.get_submodule(ref.name)
        layer = quantized_layer(float_layer, cfg, roles.get(ref.name))
        work.set_submodule(ref.name, layer)
        try:
            with replay.skipping(work, ref.name):
                if layer_inputs[0] != i:  # the layer's float inputs, shared by its candidates
                    # only this layer is quantized, so its inputs are the float model's:
                    # calibrating it on them equals calibrating the whole model
                    calls = layer_calls(work, ref.name, images)
                    layer_inputs = (i, [args for args, _ in calls])
                with torch.no_grad(), calibration(layer):  # as calibrate_ would, one layer
                    for args in layer_inputs[1]:
                        layer(*args)
                kl = 0.0
                with torch.no_grad():
                    for x, lp in zip(images, ref_logp, strict=True):
                        lq = F.log_softmax(work(x).double(), dim=1)
                        kl += float((lp.exp() * (lp - lq)).sum())
        finally:
            work.set_submodule(ref.name, float_layer)
        values[i, j] = kl / n_images
    return Sensitivity(
        names=tuple(r.name for r in refs),
        kinds=tuple(r.kind for r in refs),
        candidates=tuple(candidates),
        values=values,
        measure="kl",
        n_images=n_images,
    )


__all__ = [
    "MEASURES",
    "Sensitivity",
    "candidate_grid",
    "layer_sensitivity",
    "output_nuclear_norm",
]
