import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.models import create_model
from eaq.nn import (
    QuantAttention,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    calibrate_,
    quantizable_layers,
    quantize_,
)
from eaq.plan import LayerConfig, Plan
from eaq.quant import PerGroup, Quantizer


def _calib(size, n=8, batches=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 3, size, size, generator=g), None) for _ in range(batches)]


def test_resnet20_every_conv_and_linear_is_quantized():
    model = create_model("resnet20_cifar", weights="random")
    n_conv = sum(type(m) is nn.Conv2d for m in model.modules())
    summary = quantize_(model, Plan.uniform(4, 4))
    assert summary.kind_counts() == {"conv": n_conv, "linear": 1}
    assert n_conv == 19
    assert sum(type(m) is QuantConv2d for m in model.modules()) == n_conv
    # first and last layer kept at 8 bits, the rest at 4
    rows = {r.name: r for r in summary.layers}
    assert rows["conv1"].w_bits == 8 and rows["linear"].a_bits == 8
    assert summary.width_counts() == {"W8A8": 2, "W4A4": 18}


def test_float_layers_stay_float_and_unquantized_model_is_unchanged():
    model = create_model("resnet20_cifar", weights="random")
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    summary = quantize_(model, Plan(default=None))
    assert summary.n_quantized == 0
    assert not any(isinstance(m, Quantizer) for m in model.modules())
    assert torch.equal(model(x), ref)


def test_quantized_model_state_dict_round_trip():
    model = create_model("resnet20_cifar", weights="random")
    quantize_(model, Plan.uniform(4, 4))
    calibrate_(model, _calib(32))
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    fresh = create_model("resnet20_cifar", weights="random")
    quantize_(fresh, Plan.uniform(4, 4))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), out)


def test_group_size_that_does_not_divide_names_the_layer():
    model = create_model("resnet20_cifar", weights="random")
    with pytest.raises(EaqError, match="conv1"):
        quantize_(model, Plan.uniform(4, 4, granularity=PerGroup(7), first_last_8bit=False))


def test_quantizing_twice_is_refused():
    model = create_model("resnet20_cifar", weights="random")
    quantize_(model, Plan.uniform(8, 8))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model, Plan.uniform(8, 8))


@pytest.mark.parametrize("name,size", [("deit_tiny_cifar", 32), ("deit_tiny", 224)])
def test_vit_every_linear_and_both_attention_matmuls_are_quantized(name, size):
    torch.manual_seed(0)
    model = create_model(name, weights="random")
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert n_linear == 12 * 4 + 1  # qkv, proj, fc1, fc2 per block, and the head
    x = torch.randn(2, 3, size, size)
    ref = model(x)

    summary = quantize_(model, Plan.uniform(8, 4))
    kinds = summary.kind_counts()
    assert kinds == {"conv": 1, "linear": n_linear, "matmul": 24}
    attn = [m for m in model.modules() if isinstance(m, QuantAttention)]
    assert len(attn) == 12
    assert all(a.qk_matmul.is_quantized and a.av_matmul.is_quantized for a in attn)
    names = [r.name for r in quantizable_layers(model) if r.kind == "matmul"]
    assert names[:2] == ["blocks.0.attn.qk_matmul", "blocks.0.attn.av_matmul"]
    calibrate_(model, _calib(size, n=2, batches=1))

    def switch(matmul_only: bool | None) -> None:
        for mod in model.modules():
            for q in mod.children():
                if isinstance(q, Quantizer):
                    q.enabled = matmul_only is not None and (
                        not matmul_only or isinstance(mod, QuantMatMul)
                    )

    with torch.inference_mode():
        switch(None)  # all quantizers off: the explicit attention path equals timm's
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        switch(True)  # only the attention-matmul quantizers on
        only_matmul = model(x)
        assert not torch.allclose(only_matmul, ref, atol=1e-4)
        switch(False)
        assert not torch.allclose(model(x), only_matmul, atol=1e-4)


def test_attention_matmuls_can_be_left_float_by_regex():
    model = create_model("deit_tiny_cifar", weights="random")
    plan = Plan(default=LayerConfig(w_bits=6, a_bits=6), rules=(("re:.*_matmul", None),))
    summary = quantize_(model, plan)
    assert "matmul" not in summary.kind_counts()
    assert all(
        not a.qk_matmul.is_quantized for a in model.modules() if isinstance(a, QuantAttention)
    )
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 49
