"""onnxruntime's static quantizer (``onnxruntime.quantization.quantize_static``), 8 bits only.

The float model is exported to ONNX (torch's TorchScript exporter, opset 17, as eaq's own export
does), quantized to QDQ with int8 weights and activations on the 256 calibration images, and
run on onnxruntime's CPU provider. Every layer, the first and last included, is 8-bit: the
static quantizer's integer types here are 8-bit (its 4-bit QDQ types are not tried).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import eaq
from common import Batches, Width
from eaq.deploy.onnx_export import unshare_initializers_

PEER = "onnxruntime"
PACKAGE = "onnxruntime"
RECIPES = {
    "default": "quantize_static defaults: QDQ, per-tensor int8 weights, MinMax calibration",
    "per-channel": "quant_pre_process, QDQ, per-channel weights, MinMax calibration",
    "percentile": "quant_pre_process, QDQ, per-channel weights, Percentile (99.999) calibration",
    "entropy": "quant_pre_process, QDQ, per-channel weights, Entropy calibration",
}
_METHODS = {
    "default": CalibrationMethod.MinMax,
    "per-channel": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


class _Reader(CalibrationDataReader):
    """Feeds the calibration batches to onnxruntime's calibrator, one batch per call."""

    def __init__(self, batches: Batches, input_name: str) -> None:
        self._feeds = iter([{input_name: x.numpy()} for x, _ in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def unsupported(width: Width, recipe: str, family: str) -> str | None:
    """Why onnxruntime cannot run this cell, or None."""
    if not width.is_int8:
        return "onnxruntime's static quantizer is run at 8 bits only (int8/uint8 QDQ)"
    return None


def _export(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def quantized_counts(path: Path) -> tuple[int, int]:
    """(quantized Conv/Gemm/MatMul with a weight, quantized activation-activation MatMuls) in
    a QDQ model: a node counts when every float input it reads comes out of DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}

    def from_weight(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in ("DequantizeLinear", "Transpose", "Reshape"):
            if node.input[0] in weights:
                return True
            node = producer.get(node.input[0])
        return name in weights

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    layers = matmuls = 0
    for node in graph.node:
        if node.op_type not in _COMPUTE_OPS:
            continue
        data_inputs = node.input[:2]
        if any(from_weight(name) for name in data_inputs):
            layers += all(dequantized(name) for name in data_inputs)
        else:
            matmuls += all(dequantized(name) for name in data_inputs)
    return layers, matmuls


def quantize(
    model: nn.Module, calib_batches: Batches, width: Width, recipe: str
) -> tuple[nn.Module, dict]:
    """Export, quantize with ``recipe`` (see RECIPES) and load the QDQ model on onnxruntime."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown onnxruntime recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    calib = list(calib_batches)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, pre_path, q_path = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        _export(model, float_path, calib[0][0][:1])
        if recipe != "default":
            quant_pre_process(str(float_path), str(pre_path))
            float_path = pre_path
        quantize_static(
            str(float_path),
            str(q_path),
            _Reader(calib, "input"),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=recipe != "default",
            calibrate_method=_METHODS[recipe],
        )
        layers, matmuls = quantized_counts(q_path)
        # eaq's sessions take onnxruntime's exact integer kernels on x86 CPUs without VNNI,
        # which cannot load a QDQ graph that shares an initializer between nodes
        proto = onnx.load(str(q_path))
        unshared = unshare_initializers_(proto)
        onnx.save(proto, str(q_path))
        session = eaq.OnnxModel(q_path, threads=torch.get_num_threads())
    info = {
        "quantized_layers": layers,
        "attention_matmuls": matmuls > 0,
        "first_last": "8-bit (every layer is 8-bit)",
        "workaround": f"{unshared} shared initializers copied per use (exact kernels without VNNI)"
        if unshared
        else "",
    }
    return session, info
