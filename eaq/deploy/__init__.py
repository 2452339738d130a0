"""Deployment: quantized-model artifacts, ONNX QDQ export and onnxruntime evaluation.

- :func:`save_quantized` / :func:`load_quantized`: a folder of packed integer codes, scales and
  JSON that rebuilds the quantized model bit for bit, without calibration data.
- :func:`export_onnx`: the quantized model as an ONNX QDQ graph with eaq's own parameters.
- :class:`OnnxModel`: an ONNX file on onnxruntime's CPU provider, called like a module.
"""

from eaq.deploy.artifact import (
    ModelSpec,
    load_quantized,
    model_spec,
    pack_codes,
    read_metadata,
    save_quantized,
    unpack_codes,
)
from eaq.deploy.onnx_export import DEFAULT_OPSET, ExportReport, export_model, export_onnx
from eaq.deploy.runtime import OnnxModel, read_model_metadata, require_onnx, require_onnxruntime

__all__ = [
    "DEFAULT_OPSET",
    "ExportReport",
    "ModelSpec",
    "OnnxModel",
    "export_model",
    "export_onnx",
    "load_quantized",
    "model_spec",
    "pack_codes",
    "read_metadata",
    "read_model_metadata",
    "require_onnx",
    "require_onnxruntime",
    "save_quantized",
    "unpack_codes",
]
