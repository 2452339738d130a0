"""The quantized-model artifact: a folder that holds a quantized model without running code.

A folder written by :func:`save_quantized` holds two files:

``artifact.json``
    what the model is (its registry name, classes, input size and normalisation, the sha256 of
    the FP32 weights it came from), the plan, the method and its options, how the model's
    structure differs from a freshly built one (BatchNorms folded into ``nn.Identity``), each
    packed weight's width, shape and range, the sha256 of the tensor file, the sizes, the
    accuracy when it was measured, and the provenance.
``tensors.safetensors``
    every quantized weight as integer codes packed to its width (``<layer>.weight.codes``:
    two 4-bit codes per byte, four 6-bit codes in three bytes; each code stored as
    ``code - quant_min``, least significant bit first), and every other tensor of the quantized
    model's state dict as it is: the quantizers' scales, zero points and ranges (weights and
    activations alike), biases, norms.

:func:`load_quantized` rebuilds the model (registry name, or a float model the caller passes),
applies the same structure and plan, and loads the tensors: no calibration data is needed, and
the loaded model's logits are bit-identical to the saved model's. JSON and safetensors run no
code when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from eaq.errors import EaqError
from eaq.nn import QuantConv2d, QuantLinear, quantize_
from eaq.plan import Plan
from eaq.quant import Quantizer, dequantize, quantize

FORMAT = "eaq-quantized-model"
VERSION = 1
META = "artifact.json"
TENSORS = "tensors.safetensors"
CODES_SUFFIX = ".weight.codes"


def pack_codes(codes: Tensor, bits: int, quant_min: int) -> Tensor:
    """Pack integer codes in ``[quant_min, quant_min + 2**bits - 1]`` into bytes.

    Each code is stored as ``code - quant_min`` in ``bits`` bits, least significant bit first,
    codes one after another: two 4-bit codes a byte (the first in the low nibble), four 6-bit
    codes in three bytes.

    Examples:
        >>> pack_codes(torch.tensor([-8, 7, 0, 1]), 4, -8).tolist()
        [240, 152]
        >>> unpack_codes(pack_codes(torch.tensor([-8, 7, 0, 1]), 4, -8), 4, -8, (4,)).tolist()
        [-8, 7, 0, 1]
    """
    u = (codes.reshape(-1).to(torch.int64) - quant_min).numpy()
    if u.size and (u.min() < 0 or u.max() >= 2**bits):
        raise ValueError(f"codes outside the {bits}-bit range starting at {quant_min}")
    planes = ((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: Tensor, bits: int, quant_min: int, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_codes`: int32 codes of ``shape``."""
    n = int(np.prod(shape)) if shape else 1
    raw = np.unpackbits(packed.numpy(), bitorder="little")
    if raw.size < n * bits:
        raise EaqError(f"packed codes hold {raw.size // bits} values, the shape needs {n}")
    planes = raw[: n * bits].reshape(n, bits).astype(np.int64)
    u = (planes << np.arange(bits)).sum(axis=1)
    return torch.from_numpy(u + quant_min).to(torch.int32).reshape(shape)


def weight_codes(layer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """The integer codes (int32), scales and zero points of a layer's quantized weight.

    Scales and zero points keep the quantizer's ``scale_shape`` (keepdim) layout.
    """
    q = layer.weight_quantizer
    w = layer.weight.detach()
    return (
        quantize(w, q.scale, q.zero_point, int(q.quant_min), int(q.quant_max)),
        q.scale,
        q.zero_point,
    )


def _packed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weight is stored as codes: an enabled, calibrated uniform quantizer."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (QuantConv2d, QuantLinear))
        and type(m.weight_quantizer) is Quantizer
        and m.weight_quantizer.enabled
        and m.weight_quantizer.is_calibrated
    }


def _identity_modules(model: nn.Module, fresh: nn.Module) -> list[str]:
    """Modules that are ``nn.Identity`` in ``model`` but something else in ``fresh`` (folded
    BatchNorms)."""
    own = dict(model.named_modules())
    return [
        name
        for name, m in fresh.named_modules()
        if name and isinstance(own.get(name), nn.Identity) and not isinstance(m, nn.Identity)
    ]


def _disabled_quantizers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Quantizer) and not m.enabled]


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict with every floating-point tensor in float32."""
    total = 0
    for t in model.state_dict().values():
        total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the float model an artifact came from.

    Attributes:
        name: a registered model name, or a user's own name (then :func:`load_quantized`
            needs the float model passed in).
        num_classes, input_size: as :func:`eaq.models.create_model` takes them.
        mean, std: the input normalisation the weights expect.
        dataset: the data set it was evaluated on, or None.
        weights_sha256: the sha256 of the FP32 weights file, or None.
    """

    name: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str | None = None
    weights_sha256: str | None = None


def save_quantized(
    model: nn.Module,
    folder: str | Path,
    *,
    spec: ModelSpec,
    plan: Plan,
    fresh: nn.Module | None = None,
    method: str = "ptq",
    method_options: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write a quantized, calibrated model to ``folder`` (see the module docstring).

    The folder is written whole or not at all: the files go to a temporary folder beside it,
    which is renamed at the end. An existing artifact in ``folder`` is replaced.

    Args:
        model: the quantized model (``eaq.quantize_`` or a method, then calibration).
        folder: where to write.
        spec: how to rebuild the float model.
        plan: the plan the model was quantized with.
        fresh: a freshly built float model of the same architecture, to see which modules the
            method replaced (folded BatchNorms); built from the registry when None.
        method, method_options: what quantized it (recorded only).
        extra: more JSON-ready fields to record (accuracy, calibration, provenance).

    Returns:
        The metadata written to ``artifact.json``.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not (folder / META).is_file():
        if not folder.is_dir() or any(folder.iterdir()):
            raise EaqError(f"{folder} exists and is not an eaq artifact; choose another folder")
    if fresh is None:
        fresh = _build(spec)
    uncalibrated = [
        n
        for n, m in model.named_modules()
        if isinstance(m, Quantizer) and m.enabled and not m.is_calibrated
    ]
    if uncalibrated:
        raise EaqError(
            f"the model is not calibrated ({len(uncalibrated)} quantizers, e.g. "
            f"{uncalibrated[0]}); calibrate it before saving"
        )
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    weights = {}
    for name, layer in _packed_layers(model).items():
        q = layer.weight_quantizer
        qmin, qmax = int(q.quant_min), int(q.quant_max)
        codes, _, _ = weight_codes(layer)
        bits = q.spec.bits
        state.pop(f"{name}.weight")
        state[f"{name}{CODES_SUFFIX}"] = pack_codes(codes, bits, qmin)
        weights[name] = {
            "bits": bits,
            "shape": list(codes.shape),
            "quant_min": qmin,
            "quant_max": qmax,
            "dtype": str(layer.weight.dtype).removeprefix("torch."),
        }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": spec.name,
            "num_classes": spec.num_classes,
            "input_size": spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "dataset": spec.dataset,
            "weights_sha256": spec.weights_sha256,
        },
        "plan": plan.to_dict(),
        "method": method,
        "method_options": method_options or {},
        "structure": {
            "identity": _identity_modules(model, fresh),
            "disabled_quantizers": _disabled_quantizers(model),
        },
        "packed_weights": weights,
        "fp32_state_bytes": state_bytes(fresh),
    }
    meta.update(extra or {})
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
    try:
        save_file(state, str(tmp / TENSORS), metadata={"format": FORMAT})
        meta["tensors_sha256"] = _sha256(tmp / TENSORS)
        meta["artifact_bytes"] = (tmp / TENSORS).stat().st_size
        meta["size_ratio"] = round(meta["artifact_bytes"] / meta["fp32_state_bytes"], 4)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build(spec: ModelSpec) -> nn.Module:
    from eaq.models import create_model, model_names

    if spec.name not in model_names():
        raise EaqError(
            f"model {spec.name!r} is not registered; pass the float model to rebuild "
            "(load_quantized(folder, model=...))"
        )
    return create_model(spec.name, num_classes=spec.num_classes, input_size=spec.input_size)


def read_metadata(folder: str | Path) -> dict:
    """``artifact.json`` of an artifact folder, checked for format and version."""
    folder = Path(folder)
    hint = "pass a folder written by `eaq quantize --save DIR`"
    if not folder.is_dir():
        raise EaqError(f"artifact folder not found: {folder}; {hint}")
    if not (folder / META).is_file() or not (folder / TENSORS).is_file():
        raise EaqError(f"{folder} is not an eaq artifact (no {META} and {TENSORS}); {hint}")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise EaqError(
            f"{folder / META} is not valid JSON ({e}); the artifact is damaged"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EaqError(f"{folder / META} is not an eaq artifact description; {hint}")
    if meta.get("version") != VERSION:
        raise EaqError(
            f"{folder} is artifact version {meta.get('version')}; this eaq reads version {VERSION}"
        )
    return meta


def model_spec(meta: dict) -> ModelSpec:
    m = meta["model"]
    return ModelSpec(
        name=m["name"],
        num_classes=m["num_classes"],
        input_size=m["input_size"],
        mean=tuple(m["mean"]),
        std=tuple(m["std"]),
        dataset=m.get("dataset"),
        weights_sha256=m.get("weights_sha256"),
    )


def load_quantized(folder: str | Path, *, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the quantized model saved in ``folder``; no calibration data is needed.

    Args:
        folder: an artifact folder (:func:`save_quantized`).
        model: the float model to rebuild into (any weights; they are all replaced); built from
            the registry by name when None.

    Returns:
        ``(model, metadata)``: the quantized model in eval mode and ``artifact.json``.

    Raises:
        EaqError: not an artifact, a tensor file whose sha256 differs from the recorded one
            (truncated or edited), or tensors that do not fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_metadata(folder)
    if _sha256(folder / TENSORS) != meta.get("tensors_sha256"):
        raise EaqError(
            f"{folder / TENSORS} does not match the sha256 in {META}: the artifact was "
            "truncated or edited; save it again"
        )
    try:
        state = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError) as e:
        raise EaqError(f"cannot read {folder / TENSORS}: {e}") from None
    if model is None:
        model = _build(model_spec(meta))
    model.eval()
    for name in meta["structure"]["identity"]:
        model.set_submodule(name, nn.Identity())
    quantize_(model, Plan.from_dict(meta["plan"]))
    for name, info in meta["packed_weights"].items():
        layer = model.get_submodule(name)
        packed = state.pop(f"{name}{CODES_SUFFIX}")
        codes = unpack_codes(packed, info["bits"], info["quant_min"], tuple(info["shape"]))
        scale = state[f"{name}.weight_quantizer.scale"]
        zero_point = state[f"{name}.weight_quantizer.zero_point"]
        weight = dequantize(codes, scale, zero_point)
        state[f"{name}.weight"] = weight.to(getattr(torch, info["dtype"]))
    own = model.state_dict()
    for key in state:  # a bias a method added (BatchNorm folding)
        module_name, _, leaf = key.rpartition(".")
        if key not in own and leaf == "bias":
            layer = model.get_submodule(module_name)
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is None:
                layer.bias = nn.Parameter(torch.empty_like(state[key]))
    for name in meta["structure"]["disabled_quantizers"]:
        model.get_submodule(name).enabled = False
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise EaqError(
            f"{folder} does not fit model {meta['model']['name']}: {' '.join(first[:3])[:300]}"
        ) from None
    return model.eval(), meta
