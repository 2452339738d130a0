"""Weights files: the pretrained ResNet-20 loads and is accurate; bad files say what is wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from eaq.data import eval_batches, load_dataset
from eaq.errors import EaqError
from eaq.evaluate import evaluate
from eaq.models import create_model, get_model_info, load_state_dict_file, load_weights_
from tests.conftest import require_file


def test_state_dict_file_strips_module_prefix(resnet20_path):
    state = load_state_dict_file(resnet20_path)
    assert "conv1.weight" in state and "linear.weight" in state
    assert not any(k.startswith("module.") for k in state)
    assert state["linear.weight"].shape == (10, 64)


def test_resnet20_loads_strictly_and_reaches_90_percent(data_root, resnet20_path):
    require_file(data_root, "cifar10/test.npz")
    info = get_model_info("resnet20_cifar")
    model = create_model("resnet20_cifar", weights="default", data_root=data_root)
    same = create_model("resnet20_cifar", weights=resnet20_path)
    for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    test = load_dataset("cifar10", "test", data_root)
    batches = eval_batches(test, mean=info.mean, std=info.std, input_size=32, limit=1000)
    result = evaluate(model, batches, progress=False)
    assert result.n_images == 1000
    assert result.top1 >= 90.0


def test_fp16_and_safetensors_files_load(tmp_path, resnet20_path):
    state = load_state_dict_file(resnet20_path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "r20.safetensors"
    save_file({k: v.contiguous() for k, v in half.items()}, str(path))
    model = create_model("resnet20_cifar", weights=path)
    assert model.conv1.weight.dtype == torch.float32
    assert torch.equal(model.conv1.weight, state["conv1.weight"].half().float())
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    create_model("resnet20_cifar", weights=wrapped)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.th"
    with pytest.raises(EaqError, match=f"weights file not found: {missing}"):
        create_model("resnet20_cifar", weights=missing)


def test_unreadable_weights_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EaqError, match="cannot read weights file"):
        load_state_dict_file(junk)


def test_resnet20_file_into_resnet18_cifar_names_keys(resnet20_path):
    with pytest.raises(EaqError) as info:
        create_model("resnet18_cifar", weights=resnet20_path)
    msg = str(info.value)
    assert "does not match model resnet18_cifar" in msg
    assert "missing keys: layer" in msg and "unexpected keys: " in msg
    assert "shape mismatches: conv1.weight: file (16, 3, 3, 3) vs model (64, 3, 3, 3)" in msg
    assert "(37 in all)" in msg and "(32 in all)" in msg  # counts of missing / unexpected
    assert "another model" in msg


def test_shape_mismatch_is_named(resnet20_path):
    model = create_model("resnet20_cifar", num_classes=100)
    with pytest.raises(EaqError, match=r"shape mismatches: linear.weight: file \(10, 64\)"):
        load_weights_(model, resnet20_path, model_name="resnet20_cifar")


# The CIFAR-100 models trained here and kept in checkpoints/: (top-1 on all 10,000 test images
# as the manifest records it, top-1 on the first 1,000 as `eaq evaluate --model M --limit 1000`
# measures it).
TRAINED = {
    "resnet18": (62.89, 63.5),
    "resnet18_cifar": (75.44, 74.6),
    "deit_tiny_cifar": (60.59, 58.5),
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_checkpoint_is_the_default_and_matches_its_manifest(data_root, name):
    """A checkpoint of checkpoints/: its hash and accuracy as recorded, pinned on a slice."""
    from eaq.paths import repo_root
    from eaq.provenance import sha256
    from eaq.train.export import read_manifest

    require_file(data_root, "cifar100/test.npz")
    full, sliced = TRAINED[name]
    folder = repo_root() / "checkpoints"
    entry = read_manifest(folder)[name]
    assert sha256(folder / entry["file"]) == entry["sha256"]
    assert entry["test_images"] == 10_000 and entry["top1"] == pytest.approx(full, abs=0.005)
    info = get_model_info(name)
    assert info.default_weights == f"checkpoints/{entry['file']}"
    model = create_model(name, weights="default", data_root=data_root)
    test = load_dataset("cifar100", "test", data_root)
    batches = eval_batches(test, mean=info.mean, std=info.std, input_size=32, limit=1000)
    result = evaluate(model, batches, progress=False)
    assert result.n_images == 1000
    assert result.top1 == pytest.approx(sliced, abs=0.05)
