"""AIMET (aimet-torch 2.x): batch-norm folding, optional cross-layer equalization, AdaRound,
then a ``QuantizationSimModel`` calibrated on the 256 images (AIMET's documented PTQ flow).

The model goes through AIMET's ``prepare_model`` (a torch.fx rewrite that turns functional ops
into modules AIMET can wrap). QuantSim uses AIMET's per-channel config
(``default_config_per_channel.json``: per-channel symmetric weights, quantized op outputs) and
``post_training_tf_enhanced`` (SQNR-searched) ranges. AIMET quantizes op *outputs*, so the
input of a layer is quantized by whatever op produced it; the harness sets the first and last
layers' own quantizers (weights, inputs, outputs) to 8 bits, but the last layer's input keeps the
activation width of the pooling op before it (recorded in ``first_last``). AdaRound uses AIMET's
defaults (15,000 iterations per layer below 8 bits, 10,000 at 8, regularisation 0.01, beta
20 -> 2, 20% warm start) on every calibration batch. The ``adaround-1k`` recipe is the same
at 1,000 iterations per layer, the budget of Brevitas's learned-round example: at the default,
one AdaRound cell on ResNet-18 or DeiT takes hours on 2 cores. ``PEERS_ADAROUND_ITERS`` caps
the iterations for a smoke run and the row says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import aimet_torch
import torch
from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
from aimet_torch.batch_norm_fold import fold_all_batch_norms
from aimet_torch.common.defs import QuantScheme
from aimet_torch.cross_layer_equalization import equalize_model
from aimet_torch.model_preparer import prepare_model
from aimet_torch.quantsim import QuantizationSimModel
from torch import nn

from common import Batches, Width, compute_layers, first_last, is_vit

PEER = "aimet"
PACKAGE = "aimet-torch"
RECIPES = {
    "default": "prepare_model, BN folded into weights, QuantSim per-channel config, "
    "tf_enhanced (SQNR) ranges, op outputs quantized",
    "adaround": "the default, with AdaRound on the weights first (AIMET's default iterations, "
    "reg 0.01, beta 20->2)",
    "adaround-1k": "adaround at 1,000 iterations per layer (Brevitas's learned-round budget; "
    "AIMET's default is 15,000 below 8 bits)",
    "cle-adaround": "BN fold, cross-layer equalization (equalize_model), then adaround",
}
ADAROUND_1K_ITERATIONS = 1000
CONFIG = Path(aimet_torch.__file__).parent / "common" / "quantsim_config"
CONFIG = CONFIG / "default_config_per_channel.json"


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """AIMET expresses every benchmark width (4-31 bit integers)."""
    return None


class _Loader:
    """The calibration batches as the sized iterable AdaroundParameters wants."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.batch_size = batches[0][0].shape[0]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _weight_quantizer(module: nn.Module):
    params = getattr(module, "param_quantizers", None)
    return params["weight"] if params is not None and "weight" in params else None


def _eight_bit(sim: QuantizationSimModel, names: tuple[str, str]) -> None:
    """The first and last layers' own quantizers (weight, input, output) at 8 bits."""
    for name in names:
        module = sim.model.get_submodule(name)
        quantizers = [
            _weight_quantizer(module),
            *module.input_quantizers,
            *module.output_quantizers,
        ]
        for q in quantizers:
            if q is not None:
                q.bitwidth = 8


def _quantized_source(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node``'s value leaves a quantizer: walk back through reshapes, views and ops
    without an enabled output quantizer (a scalar multiply) to the first op that has one."""
    while True:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if any(q is not None for q in getattr(module, "output_quantizers", [])):
                return True
        elif node.op not in ("call_method", "call_function"):
            return False  # a graph input or a constant
        tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if not tensors:
            return False
        node = tensors[0]


def _count(sim: QuantizationSimModel) -> tuple[int, bool]:
    """(conv/linear layers with a weight quantizer, whether the attention matmuls take
    quantized inputs). AIMET quantizes op outputs, so a matmul's inputs count as quantized
    when the ops that produce them (through reshapes and a scalar multiply) quantize theirs."""
    layers = sum(
        _weight_quantizer(m) is not None
        for m in sim.model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    )
    gm = sim.model
    matmuls = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and "MatMul" in type(gm.get_submodule(n.target)).__name__
    ]
    quantized = all(
        all(_quantized_source(gm, a) for a in n.args[:2] if isinstance(a, torch.fx.Node))
        for n in matmuls
    )
    return layers, bool(matmuls) and quantized


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[nn.Module, dict]:
    """BN fold (+ CLE), AdaRound where the recipe says, QuantSim, calibrate."""
    calib = list(calib_batches)
    dummy = calib[0][0][:1]
    workaround = []
    if is_vit(model):
        for m in model.modules():  # AIMET wraps torch.matmul, not fused attention
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        workaround.append("timm fused attention off (AIMET sees the two matmuls)")
    model = prepare_model(model.eval())
    names = tuple(n for n in first_last(model))
    n_layers = len(compute_layers(model))
    fold_all_batch_norms(model, None, dummy_input=dummy)
    if recipe == "cle-adaround":
        equalize_model(model, dummy_input=dummy)
    with tempfile.TemporaryDirectory() as tmp:
        encodings = None
        if recipe in ("adaround", "adaround-1k", "cle-adaround"):
            iters = os.environ.get("PEERS_ADAROUND_ITERS")
            if iters:
                workaround.append(f"AdaRound capped at {iters} iterations (PEERS_ADAROUND_ITERS)")
            elif recipe == "adaround-1k":
                iters = ADAROUND_1K_ITERATIONS
            params = AdaroundParameters(
                data_loader=_Loader(calib),
                num_batches=len(calib),
                default_num_iterations=int(iters) if iters else None,
            )
            overrides = [(model.get_submodule(n), 8) for n in names] if width.w != 8 else None
            model = Adaround.apply_adaround(
                model,
                dummy,
                params,
                path=tmp,
                filename_prefix="adaround",
                default_param_bw=width.w,
                param_bw_override_list=overrides,
                default_quant_scheme=QuantScheme.post_training_tf_enhanced,
                default_config_file=str(CONFIG),
            )
            encodings = Path(tmp) / "adaround.encodings"
        sim = QuantizationSimModel(
            model,
            dummy_input=dummy,
            quant_scheme=QuantScheme.post_training_tf_enhanced,
            default_param_bw=width.w,
            default_output_bw=width.a,
            config_file=str(CONFIG),
        )
        _eight_bit(sim, names)
        if encodings is not None:  # AdaRound's weights, frozen
            sim.set_and_freeze_param_encodings(str(encodings))

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            for x, _ in calib:
                m(x)

    sim.compute_encodings(forward)
    layers, matmuls = _count(sim)
    floats = [
        n
        for n, m in sim.model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and _weight_quantizer(m) is None
    ]
    info = {
        "quantized_layers": layers,
        "attention_matmuls": matmuls,
        "first_last": "8-bit weights and own quantizers; the last layer's input at the "
        "activation width (AIMET quantizes op outputs)",
        "float_layers": floats,
        # the last layer's input comes out of the pooling before it, at the activation width
        "widths": {names[-1]: (8, width.a)},
        "workaround": "; ".join(workaround),
    }
    if layers < n_layers:
        info["first_last"] += f"; {n_layers - layers} of {n_layers} layers not quantized"
    return sim.model, info
