"""The model registry: every model builds and runs, with the architecture it claims."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.models import (
    PadShortcut,
    create_model,
    get_model_info,
    list_models,
    model_names,
    register_model,
)

EXPECTED = {"resnet20_cifar", "resnet18", "resnet18_cifar", "deit_tiny", "deit_tiny_cifar"}


def test_registry_lists_the_models():
    assert EXPECTED <= set(model_names())
    for info in list_models():
        assert info.family in {"cnn", "vit"}
        assert info.default_dataset in {"cifar10", "cifar100", "imagenet"}
        assert len(info.mean) == 3 and len(info.std) == 3


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_and_runs_at_default_size(name):
    info = get_model_info(name)
    torch.manual_seed(0)
    model = create_model(name)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(2, 3, info.input_size, info.input_size))
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()


def test_num_classes_and_input_size_override():
    model = create_model("resnet18", num_classes=7, input_size=64, weights="random")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    vit = create_model("deit_tiny_cifar", num_classes=10, input_size=16)
    assert vit.patch_embed.num_patches == 16


def test_resnet20_layout():
    model = create_model("resnet20_cifar")
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == 0.27
    assert n_params == 269_722
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2  # the first block of layer2 and of layer3
    assert all(sum(p.numel() for p in s.parameters()) == 0 for s in shortcuts)
    x = torch.randn(1, 16, 8, 8)
    y = PadShortcut(pad=8)(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_resnet18_stems():
    imagenet = create_model("resnet18")
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    cifar = create_model("resnet18_cifar")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    # torchvision's layer names, so the two share everything but the stem
    assert set(cifar.state_dict()) == set(imagenet.state_dict())


def test_deit_tiny_cifar_shape_and_unfused_attention():
    model = create_model("deit_tiny_cifar")
    assert len(model.blocks) == 12
    assert model.embed_dim == 192
    assert all(b.attn.num_heads == 3 for b in model.blocks)
    assert model.patch_embed.patch_size == (4, 4)
    assert model.pos_embed.shape == (1, 64 + 1, 192)
    attn = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert len(attn) == 12 and not any(m.fused_attn for m in attn)


def test_deit_tiny_unfused_and_timm_preprocessing():
    model = create_model("deit_tiny")
    assert all(not b.attn.fused_attn for b in model.blocks)
    info = get_model_info("deit_tiny")
    assert (info.num_classes, info.input_size) == (1000, 224)
    cfg = model.pretrained_cfg
    assert info.mean == tuple(cfg["mean"]) and info.std == tuple(cfg["std"])


def test_unknown_model_lists_names():
    with pytest.raises(EaqError, match="unknown model 'resnet21'.*valid: .*resnet20_cifar"):
        get_model_info("resnet21")
    with pytest.raises(EaqError, match="deit_tiny_cifar"):
        create_model("vit_huge")


def test_no_default_weights_says_what_to_pass():
    with pytest.raises(EaqError, match="no default weights for deit_tiny; .*--weights PATH"):
        create_model("deit_tiny", weights="default")


def test_default_weights_missing_file_says_where(tmp_path):
    with pytest.raises(EaqError, match=str(tmp_path / "models" / "resnet20_cifar10.th")):
        create_model("resnet20_cifar", weights="default", data_root=tmp_path)


@pytest.mark.parametrize("name", ["deit_tiny", "resnet18", "resnet20_cifar", "deit_tiny_cifar"])
def test_pretrained_offline_fails_fast(name, monkeypatch):
    # Simulate no network whatever this machine has, and an empty download cache.
    monkeypatch.setattr("eaq.models.weights.host_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-eaq-torch-home")
    num_classes = 1000 if name == "resnet18" else None
    start = time.perf_counter()
    try:
        create_model(name, weights="pretrained", num_classes=num_classes)
    except EaqError as exc:
        assert "--weights PATH" in str(exc)
        assert "\n" not in str(exc)
    else:  # only possible with a warm cache for that exact model
        pytest.skip(f"pretrained weights for {name} are cached locally")
    assert time.perf_counter() - start < 10.0


def test_pretrained_resnet18_needs_1000_classes():
    with pytest.raises(EaqError, match="1000 classes.*--num-classes 1000"):
        create_model("resnet18", weights="pretrained")


def test_register_model_rejects_duplicates():
    info = get_model_info("resnet20_cifar")
    with pytest.raises(ValueError, match="already registered"):
        register_model(info)(lambda num_classes, input_size: nn.Identity())
