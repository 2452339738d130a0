import builtins

import numpy as np
import onnx
import pytest
import torch

from eaq.deploy import OnnxModel, export_onnx, read_model_metadata
from eaq.deploy.runtime import require_onnxruntime
from eaq.errors import EaqError
from eaq.nn import QuantLinear
from eaq.plan import Plan
from tests.deploy.helpers import TinyConvNet, quantized, tiny_vit


def one_step_bound(model) -> float:
    """How far the logits move when the head's input moves by one quantization step."""
    head = [m for m in model.modules() if isinstance(m, QuantLinear)][-1]
    step = float(head.input_quantizer.scale)
    w = head.weight_quantizer(head.weight.detach())
    return step * float(w.abs().sum(1).max())


def assert_within_one_step(ours, theirs, model):
    """onnxruntime's logits within one step of the head's input of eaq's."""
    assert float((ours - theirs).abs().max()) <= one_step_bound(model)


def run_both(model, path, size, opset=None, n=64):
    report = export_onnx(model, path, input_shape=(3, size, size), opset=opset)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(x)
    theirs = OnnxModel(path, threads=1)(x)
    return report, ours, theirs


@pytest.mark.parametrize("w,a", [(8, 8), (4, 4), (4, 8), (6, 6)])
def test_conv_net_runs_on_onnxruntime_as_in_eaq(tmp_path, w, a):
    torch.manual_seed(0)
    float_model = TinyConvNet()
    model = quantized(TinyConvNet(), Plan.uniform(w, a, first_last_8bit=False), 8)
    model.load_state_dict(model.state_dict())
    float_model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "quantizer" not in k}, strict=False
    )
    report, ours, theirs = run_both(model, tmp_path / "m.onnx", 8)
    bound = one_step_bound(model)
    diff = (ours - theirs).abs()
    assert float(diff.max()) <= bound
    assert float(diff.median()) <= bound / 10
    with torch.no_grad():
        off = (float_model.eval()(torch.randn(64, 3, 8, 8)) - theirs).abs().max()
    assert float(off) > float(diff.max())  # the runtime quantizes: it is not the float model
    assert sorted(report.folded_batchnorm) == ["bn1", "bn2"]
    assert report.layers == 4


def test_graph_is_qdq_with_eaq_parameters(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(8, 8), 8)
    export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 4  # one per quantized input
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    # conv1's input scale is eaq's own, not recalibrated
    scales = [
        onnx.numpy_helper.to_array(n.attribute[0].t)
        for n in proto.graph.node
        if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT
    ]
    own = float(model.conv1.input_quantizer.scale)
    assert any(s.shape == () and float(s) == own for s in scales)
    # the weight codes are eaq's codes (conv1: per-channel, BN scale folded into the scale)
    codes = inits["conv1.weight.codes"]
    q = model.conv1.weight_quantizer
    ours = torch.round(model.conv1.weight / q.scale).clamp(-128, 127).to(torch.int8)
    assert np.array_equal(codes, ours.numpy())


def test_unsigned_activation_after_relu(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(8, 8), 8)
    assert not model.conv2.input_quantizer.signed
    export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    zp_types = {
        n.attribute[0].t.data_type
        for n in proto.graph.node
        if n.op_type == "Constant" and n.attribute[0].t.data_type != onnx.TensorProto.FLOAT
    }
    assert onnx.TensorProto.UINT8 in zp_types and onnx.TensorProto.INT8 in zp_types


def test_int4_weights_from_opset_21_int8_codes_below(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(4, 8, first_last_8bit=False), 8)
    r21, ours, out21 = run_both(model, tmp_path / "a.onnx", 8, opset=21)
    r13, _, out13 = run_both(model, tmp_path / "b.onnx", 8, opset=13)
    assert r21.int4 >= 3 and not r13.int4 and r21.narrow_weights == 4
    types21 = {t.data_type for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    assert onnx.TensorProto.INT4 in types21
    b = onnx.load(str(tmp_path / "b.onnx"))
    codes = onnx.numpy_helper.to_array(
        next(t for t in b.graph.initializer if t.name == "conv2.weight.codes")
    )
    assert codes.dtype == np.int8 and codes.min() >= -8 and codes.max() <= 7
    assert torch.allclose(out21, out13, atol=1e-5)


def test_vit_block_attention_matmuls_quantized(tmp_path):
    torch.manual_seed(0)
    model = quantized(tiny_vit(), Plan.uniform(8, 8), 8)
    report, ours, theirs = run_both(model, tmp_path / "v.onnx", 8)
    assert_within_one_step(ours, theirs, model)
    proto = onnx.load(str(tmp_path / "v.onnx"))
    producer = {o: n for n in proto.graph.node for o in n.output}

    def quantized_activation(name: str) -> bool:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None else None
        return dq.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear"

    both = [
        n
        for n in proto.graph.node
        if n.op_type == "MatMul"
        and all(producer.get(i) for i in n.input)
        and all(quantized_activation(i) for i in n.input)
    ]
    assert len(both) == 2  # q @ k^T and attn @ v, both inputs quantized activations
    # patch embedding, qkv, proj, fc1, fc2, head and the two attention matmuls
    assert report.layers == 8


def test_nonuniform_quantizers_named_or_kept_in_float(tmp_path):
    model = quantized(tiny_vit(), Plan.uniform(8, 8, softmax_quantizer="log2"), 8)
    out = tmp_path / "v.onnx"
    with pytest.raises(EaqError, match=r"blocks\.0\.attn\.av_matmul \(Log2Quantizer\)"):
        export_onnx(model, out, input_shape=(3, 8, 8))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    report = export_onnx(model, out, input_shape=(3, 8, 8), float_nonuniform=True)
    assert report.float_layers == ["blocks.0.attn.av_matmul"]
    assert OnnxModel(out)(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_metadata_round_trip(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(8, 8), 8)
    export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8), metadata={"model": {"a": 1}})
    assert read_model_metadata(tmp_path / "m.onnx") == {"model": {"a": 1}}


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(EaqError, match="pip install onnxruntime"):
        require_onnxruntime()


def test_bad_opset(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(8, 8), 8)
    with pytest.raises(EaqError, match="opset must be in 13..21"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8), opset=12)


def test_int4_initializer_values_are_eaq_codes(tmp_path):
    model = quantized(TinyConvNet(), Plan.uniform(4, 8, first_last_8bit=False), 8)
    export_onnx(model, tmp_path / "a.onnx", input_shape=(3, 8, 8), opset=21)
    proto = onnx.load(str(tmp_path / "a.onnx"))
    dq = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: t for t in proto.graph.initializer}
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4 and all(len(t.raw_data) == -(-int(np.prod(t.dims)) // 2) for t in int4)
    q = model.conv2.weight_quantizer
    ours = torch.round(model.conv2.weight.detach() / q.scale).clamp(-8, 7)
    ours[0] = -ours[0]  # bn2's negative scale flips channel 0
    got = [
        onnx.numpy_helper.to_array(inits[n.input[0]])
        for n in dq.values()
        if n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT4
    ]
    assert any(
        g.shape == ours.shape and np.array_equal(g.astype(np.int64), ours.numpy()) for g in got
    )


def optimized_ops(path, tmp_path) -> list[str]:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_quantized_outputs_make_every_conv_an_integer_kernel(tmp_path):
    plan = Plan.uniform(8, 8, quantize_outputs=True)
    model = quantized(TinyConvNet(), plan, 8)
    assert model.conv1.output_quantizer is not None and model.fc.output_quantizer is None
    report, ours, theirs = run_both(model, tmp_path / "m.onnx", 8)
    assert_within_one_step(ours, theirs, model)
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops and "FusedConv" not in ops
    assert report.folded_batchnorm == []  # the quantizers sit before the BatchNorms
    # without them, the convolutions whose output is not quantized next stay float
    plain = quantized(TinyConvNet(), Plan.uniform(8, 8), 8)
    export_onnx(plain, tmp_path / "p.onnx", input_shape=(3, 8, 8))
    ops = optimized_ops(tmp_path / "p.onnx", tmp_path)
    assert ops.count("QLinearConv") < 3


@pytest.mark.parametrize("opset", [None, 21])
def test_vit_with_quantized_outputs_loads_and_matches(tmp_path, opset):
    torch.manual_seed(0)
    model = quantized(tiny_vit(), Plan.uniform(8, 8, quantize_outputs=True), 8)
    assert model.patch_embed.proj.output_quantizer is not None
    report, ours, theirs = run_both(model, tmp_path / "v.onnx", 8, opset=opset)
    assert report.opset == (20 if opset is None else 21)  # no INT4 needed: opset 20
    assert_within_one_step(ours, theirs, model)


def test_no_initializer_is_shared_and_the_exact_x86_kernels_load_it(tmp_path):
    """torch merges equal constants into one initializer; onnxruntime's exact integer kernels
    for CPUs without VNNI (session.x64quantprecision) cannot load a QDQ graph that shares one,
    so the export gives each use its own copy."""
    ort = require_onnxruntime()
    model = quantized(TinyConvNet(), Plan.uniform(8, 8, quantize_outputs=True), 8)
    for m in model.modules():  # equal BatchNorm parameters: merged by torch's exporter
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_shape=(3, 8, 8))
    proto = onnx.load(str(path))
    names = {t.name for t in proto.graph.initializer}
    uses = [name for node in proto.graph.node for name in node.input if name in names]
    assert len(uses) == len(set(uses))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert_within_one_step(model(x), theirs, model)


def test_without_vnni_eaq_takes_the_exact_kernels_and_says_when_a_file_cannot(
    tmp_path, monkeypatch, caplog
):
    """On a CPU without VNNI eaq's sessions select onnxruntime's exact kernels; a file from an
    older eaq (shared Q/DQ parameters) cannot load there, so it runs on the default kernels with
    a warning that says to export it again."""
    import eaq.deploy.onnx_export as onnx_export
    import eaq.deploy.runtime as runtime

    monkeypatch.setattr(runtime, "integer_kernels_exact", lambda: False)
    model = quantized(TinyConvNet(), Plan.uniform(8, 8, quantize_outputs=True), 8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    new, old = tmp_path / "new.onnx", tmp_path / "old.onnx"
    export_onnx(model, new, input_shape=(3, 8, 8))
    with monkeypatch.context() as m:
        m.setattr(onnx_export, "unshare_initializers_", lambda proto: 0)
        export_onnx(model, old, input_shape=(3, 8, 8))
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
    with caplog.at_level("WARNING", logger=runtime.log.name):
        assert_within_one_step(ours, OnnxModel(new, threads=1)(x), model)
        assert not caplog.records
        OnnxModel(old, threads=1)(x)
    assert "export it again" in caplog.text.lower()
