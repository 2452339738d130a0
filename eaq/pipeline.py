"""The quantization pipeline: one float model, one plan, one method -> a measured quantized model.

:func:`quantize_and_evaluate` is the single place where eaq turns a float model into a
quantized one and measures it: ``eaq quantize``, every row of a study and the Python API call
it. It copies the float model (the caller's stays float), seeds torch with the calibration
seed, quantizes and calibrates with the named method, evaluates on the test batches, and,
when asked, exports the result to ONNX and evaluates that on onnxruntime too.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eaq.evaluate import EvalResult, evaluate
from eaq.methods import (
    check_method_options,
    check_shared_observers,
    plain_ptq_,
    quantize_model_,
)
from eaq.nn import QuantSummary
from eaq.plan import Plan
from eaq.quant import ObserverCache

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PipelineResult:
    """What :func:`quantize_and_evaluate` made and measured.

    Attributes:
        model: the quantized, calibrated model.
        summary: what was quantized, layer by layer.
        result: its top-1/top-5 on the test batches.
        calib_seconds: the wall time of quantization and calibration (the method's cost). A
            model finished from a shared calibration pass (``shared_pass_seconds`` not None)
            counts that pass's time, as it costs on its own, though it was not spent again.
        onnx: onnxruntime's accuracy of the exported model (``top1``, ``top5``, ``n_images``,
            ``seconds``, ``delta_top1_vs_eaq``), or None when not asked for.
        shared_pass_seconds: the time of the shared pass included in ``calib_seconds`` (spent
            by the plan that filled the :class:`~eaq.quant.ObserverCache`), or None.
    """

    model: nn.Module
    summary: QuantSummary
    result: EvalResult
    calib_seconds: float
    onnx: dict | None = None
    shared_pass_seconds: float | None = None


def quantize_and_evaluate(
    float_model: nn.Module,
    plan: Plan,
    calib: Batches,
    test: Batches,
    *,
    method: str = "ptq",
    method_options: dict | None = None,
    seed: int = 0,
    onnx_input_shape: tuple[int, int, int] | None = None,
    desc: str = "quantized",
    progress: bool = True,
    observers: ObserverCache | None = None,
) -> PipelineResult:
    """Quantize a copy of ``float_model`` with ``plan`` and ``method`` and measure it.

    Args:
        float_model: the float model (not changed).
        plan: the plan.
        calib: calibration batches (drawn from the training split).
        test: evaluation batches.
        method, method_options: a registered PTQ method and its options (checked first).
        seed: torch's seed for the method's own randomness (the calibration draw is the
            caller's).
        onnx_input_shape: ``(C, H, W)`` to also export to ONNX (QDQ) and evaluate the export
            on onnxruntime; None to skip that.
        desc, progress: the evaluation's progress bar.
        observers: with method ``ptq``, calibration passes of earlier plans of this float
            model on these ``calib`` batches to reuse (:class:`~eaq.quant.ObserverCache`;
            the same values, faster); an error with another method.
    """
    options = check_method_options(method, method_options)
    check_shared_observers(method, observers)
    torch.manual_seed(seed)
    model = copy.deepcopy(float_model)
    t0 = time.perf_counter()
    shared = None
    if observers is None:
        summary = quantize_model_(model, plan, calib, method, options)
    else:
        saved = observers.passes_saved
        summary = plain_ptq_(model, plan, calib, observers)
        if observers.passes_saved > saved:
            shared = observers.restored_seconds
    calib_seconds = time.perf_counter() - t0 + (shared or 0.0)
    result = evaluate(model, test, desc=desc, progress=progress)
    onnx = None
    if onnx_input_shape is not None:
        onnx = onnx_accuracy(model, test, result, onnx_input_shape, progress=progress)
    return PipelineResult(model, summary, result, calib_seconds, onnx, shared)


def onnx_accuracy(
    model: nn.Module,
    test: Batches,
    reference: EvalResult,
    input_shape: tuple[int, int, int],
    *,
    path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Export ``model`` to ONNX (QDQ; to ``path``, or a temporary file) and evaluate it on
    onnxruntime; ``reference`` is eaq's own accuracy of the same model."""
    from eaq.deploy import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(path) if path is not None else Path(tmp) / "model.onnx"
        if path is None:
            export_onnx(model, target, input_shape=input_shape)
        got = evaluate(OnnxModel(target), test, desc="onnxruntime", progress=progress)
    return {
        "top1": got.top1,
        "top5": got.top5,
        "n_images": got.n_images,
        "seconds": got.seconds,
        "delta_top1_vs_eaq": round(got.top1 - reference.top1, 4),
    }
