"""onnxruntime's static quantizer (``onnxruntime.quantization.quantize_static``), 8 bits only.

The float model is exported to ONNX (torch's TorchScript exporter, opset 17, as eaq's own export
does), quantized to QDQ with int8 weights and activations on the 256 calibration images, and
run on onnxruntime's CPU provider. Every layer, the first and last included, is 8-bit: the
static quantizer's integer types here are 8-bit (its 4-bit QDQ types are not tried).
"""

from __future__ import annotations

import copy
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
    "per-channel-noattn": "per-channel, quantizing only Conv/Gemm/MatMul (op_types_to_quantize, "
    "so no reshape or softmax carries quantized values into attention) and excluding the MatMuls "
    "of two activations (nodes_to_exclude): a ViT's attention matmuls stay float",
}
_METHODS = {
    "default": CalibrationMethod.MinMax,
    "per-channel": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
    "per-channel-noattn": CalibrationMethod.MinMax,
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


def dedicate_dequantize_(proto) -> int:
    """Give each consumer of a DequantizeLinear's output a copy of that node of its own (inserted
    right after it, so the graph stays sorted); returns the number of copies. onnxruntime's own
    ``DedicatedQDQPair`` option leaves the dequantized constants (GELU's, the attention scale)
    shared, which its exact x86 kernels cannot load."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    order, copies = [], 0
    for node in list(proto.graph.node):
        order.append(node)
        users = consumers.get(node.output[0], []) if node.op_type == "DequantizeLinear" else []
        for j, (user, k) in enumerate(users[1:], 2):
            twin = copy.deepcopy(node)
            twin.name, twin.output[0] = f"{node.name}.{j}", f"{node.output[0]}.{j}"
            user.input[k] = twin.output[0]
            order.append(twin)
            copies += 1
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    return copies


def _weight_reader(graph, through: tuple[str, ...]):
    """A test of whether a value comes from an initializer (or a Constant) through nodes of the
    ``through`` types, each followed by its first input."""
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}

    def reads_weight(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in through:
            name = node.input[0]
            node = producer.get(name)
        return name in weights or (node is not None and node.op_type == "Constant")

    return reads_weight


def activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes that read no initializer (through Transpose/Reshape): the
    products of two activations, a ViT's q·k and attention·v."""
    graph = onnx.load(str(path)).graph
    from_weight = _weight_reader(graph, ("Transpose", "Reshape", "Cast"))
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and not any(from_weight(i) for i in n.input[:2])
    ]


def quantized_counts(path: Path) -> tuple[int, int]:
    """(quantized Conv/Gemm/MatMul with a weight, quantized activation-activation MatMuls) in
    a QDQ model: a node counts when every float input it reads comes out of DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    from_weight = _weight_reader(graph, ("DequantizeLinear", "Transpose", "Reshape"))

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
    calib = list(calib_batches)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, pre_path, q_path = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        _export(model, float_path, calib[0][0][:1])
        if recipe != "default":
            quant_pre_process(str(float_path), str(pre_path))
            float_path = pre_path
        noattn = recipe.endswith("-noattn")
        exclude = activation_matmuls(float_path) if noattn else []
        quantize_static(
            str(float_path),
            str(q_path),
            _Reader(calib, "input"),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=recipe != "default",
            calibrate_method=_METHODS[recipe],
            nodes_to_exclude=exclude,
            op_types_to_quantize=list(_COMPUTE_OPS) if noattn else None,
        )
        layers, matmuls = quantized_counts(q_path)
        # eaq's sessions take onnxruntime's exact integer kernels on x86 CPUs without VNNI,
        # which cannot load a QDQ graph where nodes share a DequantizeLinear or an initializer
        proto = onnx.load(str(q_path))
        dedicated = dedicate_dequantize_(proto)
        unshared = unshare_initializers_(proto)
        onnx.save(proto, str(q_path))
        session = eaq.OnnxModel(q_path, threads=torch.get_num_threads())
    info = {
        "quantized_layers": layers,
        "attention_matmuls": matmuls > 0,
        "first_last": "8-bit (every layer is 8-bit)",
        "workaround": f"{dedicated} DequantizeLinear nodes and {unshared} initializers copied "
        "per consumer (exact kernels without VNNI)"
        if dedicated or unshared
        else "",
    }
    return session, info
