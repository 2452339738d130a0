"""Models outside the registry: layer subclasses, depthwise convs, torch's MultiheadAttention."""

import pytest
import timm
import torch
import torchvision
from timm.layers import Conv2dSame
from torch import nn

from eaq.energy import collect_stats, plan_energy
from eaq.errors import EaqError
from eaq.nn import (
    QuantConv2dSame,
    QuantLinear,
    QuantMultiheadAttention,
    calibrate_,
    quantizable_layers,
    quantize_,
)
from eaq.plan import Plan


def calib(size, n=4):
    return [(torch.randn(n, 3, size, size), None)]


def test_torchvision_vit_attention_quantized_and_counted():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    layers = quantizable_layers(model)
    names = [r.name for r in layers]
    attn = "encoder.layers.encoder_layer_0.self_attention"
    i = names.index(f"{attn}.in_proj")
    assert names[i : i + 4] == [
        f"{attn}.in_proj",
        f"{attn}.qk_matmul",
        f"{attn}.av_matmul",
        f"{attn}.out_proj",
    ]
    stats = collect_stats(model, 32)
    by_name = {s.name: s for s in stats.layers}
    tokens, dim = 2 * 2 + 1, 768
    assert by_name[f"{attn}.in_proj"].macs == tokens * dim * 3 * dim
    assert by_name[f"{attn}.qk_matmul"].macs == 12 * tokens * 64 * tokens
    assert by_name[f"{attn}.out_proj"].macs == tokens * dim * dim

    float_copy = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    float_copy.load_state_dict(model.state_dict())
    quantize_(float_copy, Plan(default=None))  # converted, nothing quantized: same numbers
    with torch.no_grad():
        torch.testing.assert_close(float_copy(x), ref, atol=1e-4, rtol=1e-4)

    summary = quantize_(model, Plan.uniform(8, 8))
    assert summary.n_quantized == len(layers)
    mha = model.get_submodule(attn)
    assert isinstance(mha, QuantMultiheadAttention) and isinstance(mha.in_proj, QuantLinear)
    calibrate_(model, calib(32))
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max() < 0.5 * ref.abs().max()  # close, but quantized
    assert not torch.equal(out, ref)
    assert plan_energy(stats, Plan.uniform(8, 8), "horowitz45nm").relative_energy < 0.5


def test_timm_efficientnet_with_depthwise_and_same_padding():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", num_classes=10).eval()
    assert any(type(m) is Conv2dSame for m in model.modules())
    layers = quantizable_layers(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(r.kind == "conv" for r in layers) == len(convs)  # none left out
    stats = collect_stats(model, 32)
    dw = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    dw_stats = next(s for s in stats.layers if s.name == dw)
    conv = model.get_submodule(dw)
    assert dw_stats.macs == dw_stats.output_elems * conv.weight[0].numel()  # per group
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    quantize_(model, Plan.uniform(8, 8))
    assert any(type(m) is QuantConv2dSame for m in model.modules())
    calibrate_(model, calib(32))
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape and not torch.equal(out, ref)


def test_a_subclass_with_its_own_forward_is_a_clear_error():
    class Odd(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    class Plain(nn.Linear):
        pass

    model = nn.Sequential(Odd(3, 4, 3), nn.Flatten(), Plain(4, 2))
    with pytest.raises(EaqError, match=r"layer 0 is a Odd, an nn.Conv2d subclass"):
        quantizable_layers(model)
    ok = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), Plain(4, 2))
    assert [r.kind for r in quantizable_layers(ok)] == ["conv", "linear"]
    quantize_(ok, Plan.uniform(8, 8))
    assert isinstance(ok[3], QuantLinear)
