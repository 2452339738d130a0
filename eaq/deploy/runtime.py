"""Running an exported ONNX model on onnxruntime's CPU execution provider.

:class:`OnnxModel` wraps an inference session as a module that takes and returns tensors, so
:func:`eaq.evaluate.evaluate` measures it exactly as it measures eaq's own models. The model
facts eaq writes into the file's metadata (:func:`write_model_metadata`) tell which data set and
input normalisation it expects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from eaq.errors import EaqError

log = logging.getLogger(__name__)

METADATA_KEY = "eaq"
ORT_HINT = "install it with `pip install onnxruntime` (eaq's set-up installs it)"


def require_onnxruntime():
    """The ``onnxruntime`` module, or an EaqError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise EaqError(f"onnxruntime is not installed; {ORT_HINT}") from None
    return onnxruntime


def require_onnx():
    """The ``onnx`` module, or an EaqError that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise EaqError("onnx is not installed; install it with `pip install onnx`") from None
    return onnx


def integer_kernels_exact() -> bool:
    """False on an x86-64 CPU without VNNI (AVX2, or AVX-512 before VNNI).

    There onnxruntime's default u8 x s8 matrix kernels add products in pairs into 16 bits,
    which can saturate, so their integer results may differ from eaq's by more than a rounding
    step. :func:`session` then selects onnxruntime's exact kernels instead
    (``session.x64quantprecision``).
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True  # cannot tell (not Linux): assume a current CPU
    return "avx512_vnni" in flags or "avx_vnni" in flags


def session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (graph optimizations on, but QDQ propagation)."""
    ort = require_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise EaqError(f"ONNX file not found: {path}; write one with `eaq export DIR --onnx FILE`")
    use_exact_kernels = not integer_kernels_exact()

    def load(exact: bool):
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if exact:  # no VNNI: the default 8-bit kernels can saturate; take the exact ones
            options.add_session_config_entry("session.x64quantprecision", "1")
        return ort.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            # onnxruntime 1.32's QDQ propagation writes an invalid QuantizeLinear at opset 21
            # in ViT graphs; eaq's Q/DQ pairs already sit where the integer kernels need them
            disabled_optimizers=["QDQPropagationTransformer"],
        )

    try:
        try:
            return load(use_exact_kernels)
        except Exception as e:
            if not (use_exact_kernels and "replace the existing tensor" in str(e)):
                raise
            # a file written before eaq unshared Q/DQ parameters: the exact kernels cannot
            # load it; the default ones can, and may saturate
            log.warning(
                f"{path} shares quantization parameters between nodes, which onnxruntime's "
                "exact kernels for CPUs without VNNI cannot load; it runs on the default "
                "kernels, which can saturate on this CPU. Export it again with `eaq export` "
                "for exact results"
            )
            return load(False)
    except Exception as e:  # onnxruntime raises its own types for unreadable files
        text = " ".join(str(e).split())[:300]
        raise EaqError(f"onnxruntime cannot load {path}: {text}") from None


class OnnxModel(nn.Module):
    """An ONNX file on onnxruntime's CPU provider, called like a module: images -> logits.

    Args:
        path: the ``.onnx`` file (one image input, logits as the first output).
        threads: intra-op threads (default: onnxruntime's, all cores).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def read_model_metadata(path: str | Path) -> dict:
    """The facts eaq stored in an ONNX file (``export_onnx(metadata=...)``), or ``{}``."""
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise EaqError(f"ONNX file not found: {path}; write one with `eaq export DIR --onnx FILE`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a damaged or foreign file
        raise EaqError(f"{path} is not an ONNX model: {' '.join(str(e).split())[:200]}") from None
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}
