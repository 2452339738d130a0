import json

import pytest
import torch

from eaq.deploy import ModelSpec, load_quantized, read_metadata, save_quantized
from eaq.errors import EaqError
from eaq.models import create_model, get_model_info
from eaq.plan import Plan
from tests.deploy.helpers import TinyConvNet, quantized


def spec_of(name: str) -> ModelSpec:
    info = get_model_info(name)
    return ModelSpec(name, info.num_classes, info.input_size, info.mean, info.std, "cifar100")


@pytest.mark.parametrize(
    "name,w,a,method",
    [
        ("resnet20_cifar", 4, 4, "ptq"),
        ("resnet20_cifar", 6, 6, "bnfold"),
        ("deit_tiny_cifar", 4, 8, "ptq"),
    ],
)
def test_save_load_logits_bit_identical(tmp_path, name, w, a, method):
    torch.manual_seed(0)
    plan = Plan.uniform(w, a)
    model = quantized(create_model(name), plan, 32, method)
    meta = save_quantized(model, tmp_path / "art", spec=spec_of(name), plan=plan, method=method)
    loaded, meta2 = load_quantized(tmp_path / "art")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta2["tensors_sha256"] == meta["tensors_sha256"]
    assert meta["method"] == method
    # no float copy of a packed weight is stored
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "art" / "tensors.safetensors"))
    for layer, info in meta["packed_weights"].items():
        assert f"{layer}.weight" not in stored
        codes = stored[f"{layer}.weight.codes"]
        n = 1
        for d in info["shape"]:
            n *= d
        assert codes.numel() == -(-n * info["bits"] // 8)
    if method == "bnfold":
        assert "bn1" in meta["structure"]["identity"]


def test_w4a4_artifact_is_about_an_eighth_of_fp32(tmp_path):
    plan = Plan.uniform(4, 4)
    model = quantized(create_model("resnet18_cifar"), plan, 32)
    meta = save_quantized(model, tmp_path / "a", spec=spec_of("resnet18_cifar"), plan=plan)
    assert meta["fp32_state_bytes"] > 44_000_000
    assert meta["size_ratio"] <= 0.16
    assert meta["artifact_bytes"] == (tmp_path / "a" / "tensors.safetensors").stat().st_size


def test_a_model_outside_the_registry_loads_into_a_float_model(tmp_path):
    torch.manual_seed(1)
    plan = Plan.uniform(8, 8)
    model = quantized(TinyConvNet(), plan, 8)
    spec = ModelSpec("tiny", 10, 8, (0.5,) * 3, (0.5,) * 3)
    save_quantized(model, tmp_path / "t", spec=spec, plan=plan, fresh=TinyConvNet())
    with pytest.raises(EaqError, match="not registered"):
        load_quantized(tmp_path / "t")
    loaded, _ = load_quantized(tmp_path / "t", model=TinyConvNet())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_not_an_artifact(tmp_path):
    with pytest.raises(EaqError, match="not found"):
        load_quantized(tmp_path / "missing")
    with pytest.raises(EaqError, match="is not an eaq artifact"):
        load_quantized(tmp_path)
    (tmp_path / "artifact.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(EaqError, match="not an eaq artifact description"):
        read_metadata(tmp_path)


@pytest.fixture
def saved(tmp_path):
    plan = Plan.uniform(8, 8)
    model = quantized(create_model("resnet20_cifar"), plan, 32)
    save_quantized(model, tmp_path / "art", spec=spec_of("resnet20_cifar"), plan=plan)
    return tmp_path / "art"


def test_edited_or_truncated_tensors_are_refused(saved):
    path = saved / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(EaqError, match="truncated or edited"):
        load_quantized(saved)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(EaqError, match="truncated or edited"):
        load_quantized(saved)


def test_saving_over_a_foreign_folder_or_uncalibrated_model_is_refused(tmp_path, saved):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    plan = Plan.uniform(8, 8)
    model = quantized(create_model("resnet20_cifar"), plan, 32)
    with pytest.raises(EaqError, match="not an eaq artifact"):
        save_quantized(model, tmp_path / "other", spec=spec_of("resnet20_cifar"), plan=plan)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    from eaq.nn import quantize_

    raw = create_model("resnet20_cifar")
    quantize_(raw, plan)
    with pytest.raises(EaqError, match="not calibrated"):
        save_quantized(raw, tmp_path / "new", spec=spec_of("resnet20_cifar"), plan=plan)
    assert not (tmp_path / "new").exists()
    # an artifact is replaced whole
    save_quantized(model, saved, spec=spec_of("resnet20_cifar"), plan=plan)
    load_quantized(saved)
