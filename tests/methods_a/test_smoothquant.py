"""SmoothQuant on a tiny timm ViT."""

import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from eaq.errors import EaqError
from eaq.methods import quantize_model_
from eaq.methods.smoothquant import (
    find_norm_linear_pairs,
    input_channel_absmax,
    input_channel_range,
    reparameterize_post_layernorm_,
    smooth_,
)
from eaq.plan import Plan


def _vit():
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=2
    ).eval()
    with torch.no_grad():  # outlier channels, as trained transformers have
        for block in model.blocks:
            block.norm1.weight[:3] = 30.0
            block.norm2.weight[5:7] = 20.0
            block.norm1.bias.normal_(0, 0.1)
    return model


def _calib(n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.zeros(4)) for _ in range(n)]


def _ratio(m):
    return (m.max() / m.median()).item()


def test_smoothing_keeps_the_function_and_flattens_activations():
    model = _vit()
    ref = copy.deepcopy(model)
    calib = _calib()
    pairs = find_norm_linear_pairs(model)
    assert len(pairs) == 4
    linears = [lin for _, lin in pairs]
    before = input_channel_absmax(model, linears, calib)
    smooth_(model, calib)
    after = input_channel_absmax(model, linears, calib)
    x = calib[0][0]
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-4, rtol=1e-4)
    for name in linears:
        assert _ratio(after[name]) < 0.5 * _ratio(before[name])


def test_method_runs():
    model = _vit()
    summary = quantize_model_(model, Plan.uniform(8, 8), _calib(1), method="smoothquant")
    assert summary.n_quantized > 0
    assert torch.isfinite(model(_calib(1)[0][0])).all()


def test_post_layernorm_reparameterization_keeps_the_function_and_aligns_channels():
    model = _vit()
    ref = copy.deepcopy(model)
    calib = _calib()
    linears = [lin for _, lin in find_norm_linear_pairs(model)]
    before = input_channel_range(model, linears, calib)
    factors = reparameterize_post_layernorm_(model, calib)
    after = input_channel_range(model, linears, calib)
    x = calib[0][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
    for name in linears:
        lo, hi = before[name]
        assert float((hi - lo).max() / (hi - lo).min()) > 5  # badly spread before
        lo, hi = after[name]
        half = (hi - lo) / 2
        torch.testing.assert_close(half, half.mean().expand_as(half), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close((hi + lo) / 2, torch.zeros_like(lo), rtol=0, atol=1e-4)
        assert factors[name].shape == lo.shape


def test_repq_then_options_are_checked():
    with pytest.raises(EaqError, match="then"):
        quantize_model_(_vit(), Plan.uniform(8, 8), _calib(1), "repq", {"then": "smoothquant"})
