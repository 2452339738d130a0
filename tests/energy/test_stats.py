"""Layer statistics: MAC counts against the reference figures, element-wise counts, names."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from eaq.energy import collect_stats
from eaq.models import create_model
from eaq.nn import quantizable_layers


@pytest.fixture(scope="module")
def resnet18_224():
    return collect_stats(torchvision.models.resnet18(), 224)


@pytest.fixture(scope="module")
def deit_tiny():
    return collect_stats(create_model("deit_tiny", weights="random"), 224)


def test_resnet18_224_macs(resnet18_224):
    assert resnet18_224.total_macs == pytest.approx(1.814e9, rel=5e-3)
    assert len(resnet18_224.layers) == 21


def test_resnet18_seed_setup_32_macs():
    stats = collect_stats(create_model("resnet18", num_classes=100, weights="random"), 32)
    assert stats.total_macs == pytest.approx(37.1e6, rel=5e-3)
    assert [x.kind for x in stats.layers].count("conv") == 20


def test_resnet18_cifar_32_macs():
    stats = collect_stats(create_model("resnet18_cifar", weights="random"), 32)
    assert stats.total_macs == pytest.approx(0.555e9, rel=5e-3)


def test_deit_tiny_macs_with_and_without_attention_matmuls(deit_tiny):
    by_kind = deit_tiny.macs_by_kind()
    assert deit_tiny.total_macs == pytest.approx(1.2537e9, rel=5e-3)
    assert deit_tiny.total_macs - by_kind["matmul"] == pytest.approx(1.075e9, rel=5e-3)
    # Q*K^T and softmax*V per block: 3 heads x 197 x 197 x 64 each, 12 blocks
    assert by_kind["matmul"] == 12 * 2 * 3 * 197 * 197 * 64


def test_linear_macs_are_per_token(deit_tiny):
    qkv = deit_tiny.layer("blocks.0.attn.qkv")
    assert qkv.kind == "linear"
    assert qkv.macs == 197 * 192 * 576  # not 192 * 576
    assert qkv.weight_elems == 192 * 576 + 576
    assert qkv.input_elems == 197 * 192 and qkv.output_elems == 197 * 576
    qk = deit_tiny.layer("blocks.0.attn.qk_matmul")
    assert qk.weight_elems == 0
    assert qk.input_elems == 2 * 3 * 197 * 64 and qk.output_elems == 3 * 197 * 197


def test_deit_elementwise(deit_tiny):
    ew = deit_tiny.elementwise
    assert ew["softmax"] == 12 * 3 * 197 * 197
    assert ew["gelu"] == 12 * 197 * 768
    assert ew["layernorm"] == (2 * 12 + 1) * 197 * 192
    assert ew["residual_add"] == 2 * 12 * 197 * 192


def test_resnet_elementwise(resnet18_224):
    ew = resnet18_224.elementwise
    # one residual add per BasicBlock, of its output size
    assert ew["residual_add"] == 2 * (64 * 56 * 56 + 128 * 28 * 28 + 256 * 14 * 14 + 512 * 7 * 7)
    assert ew["softmax"] == 0 and ew["batchnorm"] > 0


def test_layer_names_match_quantizable_layers():
    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    stats = collect_stats(model, 32)
    assert [(x.name, x.kind) for x in stats.layers] == [
        (r.name, r.kind) for r in quantizable_layers(model)
    ]
    # the model itself is left as it was (no attention conversion)
    assert [(r.name, r.kind) for r in quantizable_layers(model)][:3] == [
        ("patch_embed.proj", "conv"), ("blocks.0.attn.qkv", "linear"),
        ("blocks.0.attn.qk_matmul", "matmul"),
    ]  # fmt: skip
    assert not any(type(m).__name__ == "QuantAttention" for m in model.modules())


def test_conv_counts_with_groups_and_batch():
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 36, 5)
    )
    stats = collect_stats(model, (4, 6, 6), batch=3)
    conv, fc = stats.layers
    assert conv.macs == 8 * 6 * 6 * (4 // 2) * 9
    assert conv.weight_elems == 8 * 2 * 9 + 8
    assert conv.input_elems == 4 * 36 and conv.output_elems == 8 * 36
    assert fc.macs == 8 * 36 * 5


def test_batch_does_not_change_per_image_counts():
    model = torchvision.models.resnet18(num_classes=10)
    a, b = collect_stats(model, 32), collect_stats(model, 32, batch=2)
    assert a == b


def test_stats_run_without_grad_state_leak():
    model = torchvision.models.resnet18(num_classes=10)
    collect_stats(model, 32)
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_resnet20_cifar_residual_adds():
    stats = collect_stats(create_model("resnet20_cifar", weights="random"), 32)
    assert len(stats.layers) == 20
    assert stats.elementwise["residual_add"] == 3 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)
