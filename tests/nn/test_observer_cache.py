"""Shared calibration passes (ObserverCache): a plan finished from another plan's pass equals
a pass of its own, bit for bit, and runs no forward pass."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.methods import plain_ptq_
from eaq.models import create_model
from eaq.plan import Plan
from eaq.quant import ObserverCache


def _calib():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.zeros(4, dtype=torch.long))] * 2


def _vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, num_classes=5, embed_dim=16, depth=2, num_heads=2
    ).eval()


def _vit_calib():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(3, 3, 8, 8, generator=g), torch.zeros(3, dtype=torch.long))] * 2


def _count_passes(model: nn.Module) -> list:
    passes = []
    model.register_forward_pre_hook(lambda *_: passes.append(1))
    return passes


def _vit_plan(bits: int, observer: str = "minmax") -> Plan:
    return Plan.uniform(
        bits,
        bits,
        observer=observer,
        w_observer=observer,
        softmax_quantizer="log2",
        gelu_quantizer="twin",
    )


@pytest.mark.parametrize(
    "build, calib, plans",
    [
        (
            lambda: create_model("resnet20_cifar", weights="random"),
            _calib,
            lambda b: Plan.uniform(b, b),
        ),
        (_vit, _vit_calib, _vit_plan),
    ],
)
def test_a_plan_finished_from_the_cache_equals_its_own_pass(build, calib, plans):
    torch.manual_seed(0)
    float_model, batches = build().eval(), calib()
    cache = ObserverCache()
    plain_ptq_(copy.deepcopy(float_model), plans(8), batches, cache)  # fills the cache
    cached = copy.deepcopy(float_model)
    passes = _count_passes(cached)
    plain_ptq_(cached, plans(4), batches, cache)
    assert passes == [] and cache.passes_saved == 1
    own = copy.deepcopy(float_model)
    plain_ptq_(own, plans(4), batches)
    got, want = cached.state_dict(), own.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    x = batches[0][0]
    assert torch.equal(cached(x), own(x))


def test_other_observer_settings_run_a_pass_of_their_own():
    float_model, batches = _vit(), _vit_calib()
    cache = ObserverCache()
    plain_ptq_(copy.deepcopy(float_model), _vit_plan(8), batches, cache)
    mse = copy.deepcopy(float_model)
    passes = _count_passes(mse)
    plain_ptq_(mse, _vit_plan(4, observer="mse"), batches, cache)
    assert len(passes) == len(batches) and cache.passes_saved == 0
    again = copy.deepcopy(float_model)
    passes = _count_passes(again)
    plain_ptq_(again, _vit_plan(6, observer="mse"), batches, cache)  # now cached
    assert passes == [] and cache.passes_saved == 1


def test_a_plan_with_a_quantizer_the_cache_lacks_runs_a_pass():
    float_model, batches = create_model("resnet20_cifar", weights="random").eval(), _calib()
    cache = ObserverCache()
    plain_ptq_(
        copy.deepcopy(float_model), Plan.uniform(8, 8, first_last_8bit=False), batches, cache
    )
    outputs = copy.deepcopy(float_model)
    passes = _count_passes(outputs)
    plain_ptq_(outputs, replace(Plan.uniform(8, 8), quantize_outputs=True), batches, cache)
    assert len(passes) == len(batches)


def test_the_pipeline_reuses_passes_for_ptq_only():
    from eaq.pipeline import quantize_and_evaluate

    model, batches = create_model("resnet20_cifar", weights="random").eval(), _calib()
    with pytest.raises(EaqError, match="for method 'ptq', not 'gptq'"):
        quantize_and_evaluate(
            model, Plan.uniform(4, 4), batches, batches, method="gptq", observers=ObserverCache()
        )


def test_a_shared_pass_counts_its_time_as_the_rows_calibration_cost():
    from eaq.pipeline import quantize_and_evaluate

    model, batches = create_model("resnet20_cifar", weights="random").eval(), _calib()
    cache = ObserverCache()
    first = quantize_and_evaluate(
        model, Plan.uniform(8, 8), batches, batches, observers=cache, progress=False
    )
    second = quantize_and_evaluate(
        model, Plan.uniform(4, 4), batches, batches, observers=cache, progress=False
    )
    assert first.shared_pass_seconds is None and cache.passes_saved == 1
    assert 0 < second.shared_pass_seconds == cache.restored_seconds <= first.calib_seconds
    assert second.calib_seconds >= second.shared_pass_seconds
