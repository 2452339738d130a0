"""ONNX export of a quantized model in the QDQ format, with eaq's own scales and zero points.

Each uniform quantizer of the model becomes a ``QuantizeLinear -> DequantizeLinear`` pair (an
activation) or a ``DequantizeLinear`` of an integer initializer (a weight), so onnxruntime, or
any runtime that reads QDQ models, can fuse them into integer kernels. Nothing is calibrated
again: every scale, zero point and integer code is the one eaq computed.

How eaq's quantizers map to ONNX:

=========================  ==================================================================
eaq                        ONNX
=========================  ==================================================================
activation, 8 bits         ``QuantizeLinear``/``DequantizeLinear`` with an int8 zero point
                           (signed) or uint8 (unsigned, where calibration chose unsigned)
activation, 2..7 bits      the same, after a ``Clip`` to the codes' narrower range
weight, per channel        ``DequantizeLinear(axis=0)`` of the codes (axis 1 for a Linear,
                           whose weight is stored transposed for ``MatMul``)
weight, 4 bits or fewer    INT4 initializers from opset 21; int8 codes restricted to the
                           narrower range below it (:attr:`ExportReport.int4`)
weight, 5..8 bits          int8 codes restricted to the narrower range
BatchNorm after a conv     folded into the conv's per-channel weight *scale* and bias: the
                           integer codes stay those eaq chose
conv/linear bias           int32 codes at scale ``input scale * weight scale`` (as integer
                           kernels take it) when the input is quantized, else float
attention matmuls          both inputs quantized, as eaq's ``qk_matmul``/``av_matmul``
log2/twin quantizers       not expressible in QDQ: an error naming the layers, or kept in
                           float with ``float_nonuniform=True``
=========================  ==================================================================

The graph comes from PyTorch's TorchScript exporter at opset 20 (its newest); opset 21, which
INT4 needs, is reached with ONNX's version converter. By default the opset is 21 when some
weight has 4 bits or fewer and 20 otherwise: onnxruntime 1.32's QDQ propagation builds an
invalid QuantizeLinear at opset 21 in some ViT graphs (:class:`eaq.deploy.OnnxModel` turns that
transformer off, since eaq's graph already holds its Q/DQ pairs where the kernels need them).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaq.deploy.artifact import pack_codes, weight_codes
from eaq.errors import EaqError
from eaq.nn import QuantConv2d, QuantLinear, QuantMatMul
from eaq.quant import PerChannel, PerTensor, Quantizer, dequantize, fake_quantize

MIN_OPSET = 13  # per-channel DequantizeLinear
MAX_OPSET = 21  # INT4 initializers
TORCH_MAX_OPSET = 20  # the TorchScript exporter's newest opset
DEFAULT_OPSET = None  # 21 when INT4 weights need it, else 20
INT4_OPSET = 21


@dataclass
class ExportReport:
    """What an export did.

    Attributes:
        path: the ``.onnx`` file.
        opset: its opset.
        layers: quantized layers exported (conv, linear, matmul).
        int4: how many weights are INT4 initializers.
        narrow_weights: how many weights have 4 bits or fewer (INT4 from opset 21; the rest,
            and all below opset 21, int8 codes within their range).
        folded_batchnorm: BatchNorms folded into the conv before them.
        float_layers: layers whose non-uniform input quantizer was kept in float.
        size_bytes: the file's size.
    """

    path: Path
    opset: int
    layers: int = 0
    int4: int = 0
    narrow_weights: int = 0
    folded_batchnorm: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    size_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "layers": self.layers,
            "int4_weights": self.int4,
            "narrow_weights": self.narrow_weights,
            "folded_batchnorm": self.folded_batchnorm,
            "float_layers": self.float_layers,
            "size_bytes": self.size_bytes,
        }


def _int_type(bits: int, signed: bool) -> torch.dtype:
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed else torch.uint16


class _QDQ(torch.autograd.Function):
    """Per-tensor activation fake quantization that exports as Clip? -> Q -> DQ."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, bits):  # noqa: D102
        s = torch.tensor(scale, dtype=torch.float32)
        return fake_quantize(x, s, torch.tensor(zero_point, dtype=torch.int32), qmin, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, bits):  # noqa: D102
        signed = qmin < 0
        dtype = _int_type(bits, signed)
        info = torch.iinfo(dtype)
        s, zp = scale, zero_point
        s_c = g.op("Constant", value_t=torch.tensor(s, dtype=torch.float32))
        z_c = g.op("Constant", value_t=torch.tensor(zp, dtype=dtype))
        if (qmin, qmax) != (info.min, info.max):  # narrower than the ONNX type: clip first
            lo = torch.tensor((qmin - zp) * s, dtype=torch.float32)
            hi = torch.tensor((qmax - zp) * s, dtype=torch.float32)
            x = g.op("Clip", x, g.op("Constant", value_t=lo), g.op("Constant", value_t=hi))
        q = g.op("QuantizeLinear", x, s_c, z_c)
        return g.op("DequantizeLinear", q, s_c, z_c)


class _DQ(torch.autograd.Function):
    """Dequantization of integer codes (a weight or a bias) along ``axis``."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis):  # noqa: D102
        shape = [1] * codes.dim()
        if scale.dim() == 1:
            shape[axis] = -1
        return dequantize(codes, scale.reshape(shape), zero_point.reshape(shape))

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis):  # noqa: D102
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


class _ActQuant(nn.Module):
    """An activation quantizer's parameters, applied as Q -> DQ."""

    def __init__(self, q: Quantizer) -> None:
        super().__init__()
        # python numbers: the exporter writes them as constants of the graph
        self.scale = float(q.scale.reshape(()))
        self.zero_point = int(q.zero_point.reshape(()))
        self.qmin, self.qmax = int(q.quant_min), int(q.quant_max)
        self.bits = q.spec.bits

    def forward(self, x: Tensor) -> Tensor:
        return _QDQ.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, self.bits)


def _act(q: Quantizer | None, name: str, float_nonuniform: bool, floated: list[str]):
    if q is None or not q.enabled:
        return None
    if type(q) is not Quantizer:  # log2 / twin
        if not float_nonuniform:
            raise _Unsupported(name, type(q).__name__)
        floated.append(name)
        return None
    if not isinstance(q.spec.granularity, PerTensor):
        raise EaqError(f"layer {name}: per-channel activation quantizers are not exported")
    return _ActQuant(q)


class _Unsupported(Exception):
    def __init__(self, layer: str, kind: str) -> None:
        self.layer, self.kind = layer, kind


class _WeightCodes(nn.Module):
    """A weight as integer codes, per-channel scales and zero points (already BN-scaled)."""

    def __init__(
        self, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int, bits: int
    ) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.axis = axis

    def forward(self) -> Tensor:
        return _DQ.apply(self.codes, self.scale, self.zero_point, self.axis)


def _weight_module(
    name: str, layer: nn.Module, bn_factor: Tensor | None, transpose: bool
) -> _WeightCodes | None:
    q = layer.weight_quantizer
    if q is None or not q.enabled:
        return None
    if type(q) is not Quantizer:
        raise _Unsupported(name, type(q).__name__)
    g = q.spec.granularity
    if not (isinstance(g, PerTensor) or (isinstance(g, PerChannel) and g.axis == 0)):
        raise EaqError(
            f"layer {name}: weight granularity {g} cannot be exported yet; "
            "use per-channel (axis 0) or per-tensor weights"
        )
    codes, scale, zp = weight_codes(layer)
    out = codes.shape[0]
    scale = scale.reshape(-1).expand(out).clone() if bn_factor is not None else scale.reshape(-1)
    zp = zp.reshape(-1).expand(out).clone() if bn_factor is not None else zp.reshape(-1)
    if bn_factor is not None:
        scale = scale * bn_factor.abs()
        flip = bn_factor < 0  # a negative BN scale: negate that channel's codes
        codes[flip] = -codes[flip]
        zp = torch.where(flip, -zp, zp)
    if scale.numel() == 1:
        scale, zp = scale.reshape(()), zp.reshape(())
    bits = q.spec.bits
    dtype = torch.int8 if bits <= 8 else torch.int16
    info = torch.iinfo(dtype)
    if int(codes.min()) < info.min or int(codes.max()) > info.max:
        raise EaqError(f"layer {name}: codes do not fit {dtype} after folding its BatchNorm")
    axis = 0
    if transpose:  # Linear: [out, in] -> [in, out] so that MatMul takes it as it is
        codes, axis = codes.t().contiguous(), 1
    return _WeightCodes(codes.to(dtype), scale.float(), zp.to(dtype), axis, bits)


class _ExportConv(nn.Module):
    def __init__(self, conv: QuantConv2d, act, weight, bn, out) -> None:
        super().__init__()
        self.act = act
        self.weight = weight
        self.conv = (conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv.padding_mode != "zeros":
            raise EaqError(f"padding mode {conv.padding_mode!r} is not exported")
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        if weight is None:
            self.register_buffer("float_weight", conv.weight.detach().clone())
        if bn is not None:
            factor, shift = _bn_affine(bn)
            if weight is None:
                self.float_weight = self.float_weight * factor.reshape(-1, 1, 1, 1)
            bias = shift if bias is None else bias * factor + shift
        self.bias = _Bias(bias, act, weight)
        self.out = out

    def op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, *self.conv)

    def forward(self, x: Tensor) -> Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.weight() if self.weight is not None else self.float_weight
        y = self.op(x, w, self.bias())
        return y if self.out is None else self.out(y)


class _ExportLinear(_ExportConv):
    """As :class:`_ExportConv`, with the weight stored ``[in, out]`` for ``MatMul``."""

    def __init__(self, linear: QuantLinear, act, weight, out) -> None:
        nn.Module.__init__(self)
        self.act = act
        self.weight = weight
        if weight is None:
            self.register_buffer("float_weight", linear.weight.detach().t().contiguous())
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.bias = _Bias(bias, act, weight)
        self.out = out

    def op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        y = torch.matmul(x, w)
        return y if b is None else y + b


class _Bias(nn.Module):
    """A bias: int32 codes at scale ``input scale * weight scale`` when both are quantized."""

    def __init__(self, bias: Tensor | None, act: _ActQuant | None, weight) -> None:
        super().__init__()
        self.codes = None
        if bias is None:
            self.register_buffer("value", None)
            return
        if act is None or weight is None or bool((weight.zero_point != 0).any()):
            self.register_buffer("value", bias.float())
            return
        scale = (torch.tensor(act.scale) * weight.scale).float().expand(bias.shape[0]).contiguous()
        codes = torch.round(bias.float() / scale).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        self.register_buffer("value", None)
        self.codes = _WeightCodes(codes, scale, torch.zeros_like(codes), 0, 32)

    def forward(self) -> Tensor | None:
        return self.codes() if self.codes is not None else self.value


class _ExportMatMul(nn.Module):
    def __init__(self, a, b) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.a is not None:
            a = self.a(a)
        if self.b is not None:
            b = self.b(b)
        return a @ b


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    g = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    factor = g / torch.sqrt(bn.running_var + bn.eps)
    return factor.float(), (beta - bn.running_mean * factor).float()


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{conv: bn}`` for each quantized conv whose output only feeds a BatchNorm."""
    from eaq.methods.folding import find_conv_bn_pairs

    return dict(find_conv_bn_pairs(model))


def export_model(model: nn.Module, *, float_nonuniform: bool = False) -> tuple[nn.Module, dict]:
    """A copy of a quantized model whose quantizers export as QDQ (see the module docstring).

    Returns:
        The export module and a dict with ``layers``, ``folded_batchnorm`` and
        ``float_layers``.

    Raises:
        EaqError: a quantizer that QDQ cannot express (naming every such layer), an
            uncalibrated model, or an unsupported granularity.
    """
    model = copy.deepcopy(model).eval()
    pairs = _conv_bn_pairs(model)
    unsupported: list[str] = []
    floated: list[str] = []
    folded: list[str] = []
    n_layers = 0
    for name, module in list(model.named_modules()):
        quantizers = (
            [q for q in module.children() if isinstance(q, Quantizer)]
            if isinstance(module, (QuantConv2d, QuantLinear, QuantMatMul))
            else []
        )
        if any(not q.is_calibrated for q in quantizers):
            raise EaqError(f"layer {name} is not calibrated; calibrate the model before export")
        try:
            if isinstance(module, QuantConv2d):
                out = _act(module.output_quantizer, name, float_nonuniform, floated)
                # a BatchNorm after an output quantizer stays a BatchNorm
                bn_name = pairs.get(name) if module.output_quantizer is None else None
                bn = model.get_submodule(bn_name) if bn_name else None
                factor = _bn_affine(bn)[0] if bn is not None else None
                act = _act(module.input_quantizer, name, float_nonuniform, floated)
                weight = _weight_module(name, module, factor, transpose=False)
                new: nn.Module = _ExportConv(module, act, weight, bn, out)
                if bn is not None:
                    model.set_submodule(bn_name, nn.Identity())
                    folded.append(bn_name)
            elif isinstance(module, QuantLinear):
                act = _act(module.input_quantizer, name, float_nonuniform, floated)
                out = _act(module.output_quantizer, name, float_nonuniform, floated)
                weight = _weight_module(name, module, None, transpose=True)
                new = _ExportLinear(module, act, weight, out)
            elif isinstance(module, QuantMatMul):
                if not module.is_quantized:
                    continue
                a = _act(module.a_quantizer, name, float_nonuniform, floated)
                b = _act(module.b_quantizer, name, float_nonuniform, floated)
                new = _ExportMatMul(a, b)
            else:
                continue
        except _Unsupported as e:
            unsupported.append(f"{e.layer} ({e.kind})")
            continue
        model.set_submodule(name, new)
        n_layers += 1
    if unsupported:
        shown = ", ".join(unsupported[:8]) + (" ..." if len(unsupported) > 8 else "")
        raise EaqError(
            f"QDQ cannot express the non-uniform quantizers of {len(unsupported)} layer(s): "
            f"{shown}; quantize with uniform quantizers (--softmax-quantizer uniform "
            "--gelu-quantizer uniform), or export with --float-nonuniform to keep those inputs "
            "in float"
        )
    return model, {"layers": n_layers, "folded_batchnorm": folded, "float_layers": floated}


def unshare_initializers_(proto) -> int:
    """Give every use of an initializer that several node inputs share its own copy.

    torch's exporter merges constants of equal value (zero points, scales, equal BatchNorm
    parameters) into one initializer. onnxruntime's exact x86 integer kernels
    (``session.x64quantprecision``, which :func:`eaq.deploy.runtime.session` selects on CPUs
    without VNNI) fail to load a QDQ graph where a Q/DQ parameter is shared ("Attempt to replace
    the existing tensor"). Returns the number of copies made.
    """
    import copy as _copy

    initializers = {t.name: t for t in proto.graph.initializer}
    taken = set(initializers) | {v.name for v in proto.graph.input}
    taken |= {name for node in proto.graph.node for name in node.output}
    seen: dict[str, int] = {}
    copies = 0
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            if name not in initializers:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            tensor = _copy.deepcopy(initializers[name])
            tensor.name = f"{name}.{seen[name]}"
            while tensor.name in taken:
                tensor.name += "_"
            proto.graph.initializer.append(tensor)
            taken.add(tensor.name)
            node.input[k] = tensor.name
            copies += 1
    return copies


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int | None = DEFAULT_OPSET,
    float_nonuniform: bool = False,
    metadata: dict | None = None,
) -> ExportReport:
    """Export a quantized, calibrated model to an ONNX QDQ file (written atomically).

    Args:
        model: the quantized model (``eaq.quantize_`` and calibration, or a loaded artifact).
        path: the ``.onnx`` file to write.
        input_shape: ``(channels, height, width)`` of one image; the batch is dynamic.
        opset: ONNX opset, 13..21; from 21 on, weights of 4 bits or fewer are INT4. None: 21
            when the model has such weights, else 20.
        float_nonuniform: keep the inputs of log2/twin quantizers in float instead of failing.
        metadata: JSON-ready facts stored in the file under the key ``eaq`` (the model's
            name, data set and normalisation: ``eaq evaluate --onnx`` reads them).

    Returns:
        An :class:`ExportReport`.
    """
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise EaqError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    path = Path(path)
    export, info = export_model(model, float_nonuniform=float_nonuniform)
    narrow = sum(isinstance(m, _WeightCodes) and m.bits <= 4 for m in export.modules())
    if opset is None:
        opset = INT4_OPSET if narrow else TORCH_MAX_OPSET
    from eaq.deploy.runtime import require_onnx

    onnx = require_onnx()

    dummy = torch.zeros(1, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter warns that it is deprecated and about traced constants
            warnings.simplefilter("ignore")
            torch.onnx.export(
                export,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=min(opset, TORCH_MAX_OPSET),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        if opset > TORCH_MAX_OPSET:
            proto = onnx.version_converter.convert_version(proto, opset)
        int4 = _weights_to_int4_(proto, export) if opset >= INT4_OPSET else 0
        unshare_initializers_(proto)
        if metadata is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = "eaq", json.dumps(metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=path,
        opset=opset,
        layers=info["layers"],
        int4=int4,
        narrow_weights=sum(isinstance(m, _WeightCodes) and m.bits <= 4 for m in export.modules()),
        folded_batchnorm=info["folded_batchnorm"],
        float_layers=info["float_layers"],
        size_bytes=path.stat().st_size,
    )


def _weights_to_int4_(proto, export: nn.Module) -> int:
    """Make the codes of weights of 4 bits or fewer INT4 initializers, in place; return how many.

    A weight whose codes left the 4-bit range when a negative BatchNorm scale negated a
    channel (code -8 becomes 8) stays int8.

    Each such ``DequantizeLinear`` gets INT4 initializers of its own for its codes and zero
    point: the exporter shares equal tensors between layers (through ``Identity`` nodes), and
    another layer may need them at 8 bits.
    """
    from eaq.deploy.runtime import require_onnx

    onnx = require_onnx()
    from onnx import numpy_helper

    narrow = {
        f"{name}.codes"
        for name, m in export.named_modules()
        if isinstance(m, _WeightCodes) and m.bits <= 4
    }
    inits = {t.name: t for t in proto.graph.initializer}
    identity = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity"}

    def source(name: str) -> str | None:
        while name not in inits and name in identity:
            name = identity[name]
        return name if name in inits else None

    changed = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        codes, zp = source(node.input[0]), source(node.input[2])
        if codes not in narrow or zp is None:
            continue
        folded = numpy_helper.to_array(inits[codes])
        if folded.min() < -8 or folded.max() > 7:  # -(-8) after a negative BatchNorm scale
            continue
        for i, init in ((0, codes), (2, zp)):
            values = torch.from_numpy(numpy_helper.to_array(inits[init]).astype(np.int64))
            # ONNX INT4: two's-complement nibbles, the first element in the low nibble;
            # pack_codes stores code + 8, and flipping the top bit of each nibble turns that
            # into two's complement
            raw = (pack_codes(values, 4, -8) ^ 0x88).numpy().tobytes()
            new = f"{node.output[0]}.int4.{i}"
            proto.graph.initializer.append(
                onnx.helper.make_tensor(
                    new, onnx.TensorProto.INT4, tuple(values.shape), raw, raw=True
                )
            )
            node.input[i] = new
        changed += 1
    if changed:  # drop what no node reads any more
        used = {i for n in proto.graph.node for i in n.input}
        keep = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return changed
