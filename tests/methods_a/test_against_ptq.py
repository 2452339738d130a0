"""Every method, called by name through ``quantize_model_``, against plain PTQ on the same model.

Each case measures the property that defines its method and asserts a margin over ``ptq``
measured in the same test, so a method quietly replaced by plain PTQ (or an option that no
longer reaches the code) fails here. A method registered without a case fails too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eaq.errors import EaqError
from eaq.methods import get_method, method_names, quantize_model_
from eaq.methods.ranking import pearson
from eaq.models import BasicBlockA
from eaq.plan import Plan
from eaq.quant import PerTensor
from tests.methods_a.test_equalization import separable
from tests.methods_b.helpers import correlated

pytestmark = pytest.mark.usefixtures("one_thread")


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def _cnn(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(8, 16, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(16))
    layers += [nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)]
    net = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].weight.uniform_(0.5, 2.0)
    return net.eval()


def _resblock_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), BasicBlockA(16, 16), nn.Conv2d(16, 8, 1)
    ).eval()  # fmt: skip


def _vit(outliers: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2
    ).eval()
    if outliers:  # a few LayerNorm channels far larger than the rest, as in trained ViTs
        with torch.no_grad():
            for block in model.blocks:
                block.norm1.weight[:3] = 30.0
                block.norm2.weight[5:7] = 20.0
    return model


def _images(n: int = 32, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 16, 16, generator=g), None)]


def _features(n: int = 64, positive: bool = False) -> list:
    return [(correlated(n, 8, 8, seed=0, positive=positive), None)]


@dataclass(frozen=True)
class Case:
    """``build()`` -> model; the method's score is ``score(model_after, reference, x)``, lower
    is better, and must be below ``margin`` times plain PTQ's."""

    build: Callable[[], nn.Module]
    calib: Callable[[], list]
    plan: Plan
    score: Callable[[nn.Module, nn.Module, torch.Tensor], float]
    margin: float
    options: dict | None = None


def _output_mse(model, ref, x):
    with torch.no_grad():
        return _mse(model(x), ref(x))


def _channel_mean_error(model, ref, x):
    """The largest per-channel mean of the output error (what bias correction removes)."""
    with torch.no_grad():
        err = model(x) - ref(x)
    return float(err.mean((0, 2, 3)).abs().max())


def _batchnorms_left(model, ref, x):
    """BatchNorms left beside their convs (bnfold's job is to leave none), plus a tiny
    output error so that folding must also keep the function."""
    n = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return n + _output_mse(model, ref, x)


def _one_minus_pearson(model, ref, x):
    with torch.no_grad():
        return 1.0 - float(pearson(ref(x), model(x)))


W3 = Plan.uniform(3, None, first_last_8bit=False)
W3_TENSOR = Plan.uniform(3, None, granularity=PerTensor(), first_last_8bit=False)

CASES: dict[str, Case] = {
    "bnfold": Case(lambda: _cnn(bn=True), _features, Plan.uniform(8, 8), _batchnorms_left, 0.5),
    "biascorr": Case(lambda: _cnn(bn=False), _features, W3_TENSOR, _channel_mean_error, 0.2),
    "gptq": Case(lambda: _cnn(bn=False), _features, W3, _output_mse, 0.5),
    "adaround": Case(lambda: _cnn(bn=False), _features, W3, _output_mse, 0.8, {"iters": 300}),
    "brecq": Case(_resblock_net, _features, Plan.uniform(3, 4), _output_mse, 0.8, {"iters": 300}),
    "qdrop": Case(_resblock_net, _features, Plan.uniform(3, 3), _output_mse, 0.8, {"iters": 300}),
    "cle": Case(
        separable,
        lambda: [(torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)), None)],
        Plan.uniform(4, 8, first_last_8bit=False),
        _output_mse,
        0.5,
    ),
    "smoothquant": Case(
        lambda: _vit(outliers=True),
        _images,
        Plan.uniform(8, 8),  # the paper's W8A8
        _output_mse,
        0.6,
    ),
    "repq": Case(
        lambda: _vit(outliers=True),
        _images,
        Plan.uniform(8, 4),  # 4-bit activations, where per-channel LayerNorm ranges matter
        _output_mse,
        0.6,
    ),
    "ranking": Case(
        _vit,
        _images,
        Plan.uniform(4, 4),
        _one_minus_pearson,
        0.6,
        {"search_steps": 20, "rounds": 1, "search_images": 32},
    ),
}


def test_every_method_has_a_case():
    assert set(CASES) == set(method_names()) - {"ptq"}


def _score(name: str, case: Case, method: str, options: dict | None) -> float:
    ref = case.build()
    model = copy.deepcopy(ref)
    calib = case.calib()
    quantize_model_(model, case.plan, calib, method, options)
    return case.score(model, ref, calib[0][0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_method_beats_plain_ptq_at_what_defines_it(name):
    case = CASES[name]
    ptq = _score(name, case, "ptq", None)
    ours = _score(name, case, name, case.options)
    assert ours < case.margin * ptq, f"{name}: {ours:.4g} vs ptq {ptq:.4g}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_check_fails_for_plain_ptq_under_the_method_name(name, monkeypatch):
    """The same check with the method's function swapped for plain PTQ's must fail."""
    import eaq.methods.registry as registry

    case = CASES[name]
    fake = replace(get_method(name), fn=get_method("ptq").fn, options={}, check=None)
    monkeypatch.setitem(registry.METHODS._entries, name, fake)
    assert get_method(name).fn is get_method("ptq").fn
    ptq = _score(name, case, "ptq", None)
    ours = _score(name, case, name, None)
    assert not ours < case.margin * ptq


@pytest.mark.parametrize(
    ("name", "build", "plan", "match", "options"),
    [
        ("smoothquant", lambda: _cnn(), Plan.uniform(8, 8), "LayerNorm -> Linear", None),
        ("smoothquant", _vit, Plan.uniform(8, None), "quantizes none", None),
        ("repq", lambda: _cnn(), Plan.uniform(8, 8), "LayerNorm -> Linear", None),
        ("cle", _vit, Plan.uniform(4, 8), "no pair of convolutions", None),
        ("bnfold", lambda: _cnn(bn=False), Plan.uniform(8, 8), "no convolution followed", None),
        ("gptq", lambda: _cnn(), Plan.uniform(None, 8), "w_bits is unset", None),
        ("adaround", lambda: _cnn(), Plan.uniform(None, 8), "w_bits is unset", None),
        ("brecq", lambda: _cnn(), Plan.uniform(None, 8), "w_bits is unset", None),
        ("qdrop", lambda: _cnn(), Plan.uniform(4, None), "a_bits is unset", None),
        ("cle", lambda: _cnn(), Plan.uniform(4, None), "'qdrop' works on", {"then": "qdrop"}),
        ("repq", _vit, Plan.uniform(None, 8), "'gptq' works on", {"then": "gptq"}),
    ],
)
def test_a_method_where_it_cannot_apply_is_an_error(name, build, plan, match, options):
    model = build()
    before = copy.deepcopy(model.state_dict())
    calib = _images() if name in ("smoothquant", "repq") else _features()
    with pytest.raises(EaqError, match=match):
        quantize_model_(model, plan, calib, name, options)
    for key, value in model.state_dict().items():  # refused before touching the model
        assert torch.equal(value, before[key]), key


def test_then_options_reach_the_method_handed_over_to(monkeypatch):
    import eaq.methods.gptq as gptq_module

    seen = []
    real = gptq_module.gptq_

    def record(model, calib, **kwargs):
        seen.append(kwargs.get("float_model") is not None)
        return real(model, calib, **kwargs)

    monkeypatch.setattr(gptq_module, "gptq_", record)
    for then_options in (None, {"target": "float"}):
        options = {"then": "gptq", "then_options": then_options}
        quantize_model_(_vit(), Plan.uniform(4, 8), _images(), "repq", options)
    assert seen == [False, True]


@pytest.mark.parametrize(
    "options,match",
    [
        ({"then": "gptq", "then_options": {"target": "fp32"}}, "method 'gptq': target must be"),
        ({"then": "gptq", "then_options": {"iters": 5}}, "'gptq' has no option"),
        ({"then": "gptq", "then_options": 5}, "must be a mapping of 'gptq'"),
    ],
)
def test_then_options_are_checked_against_the_method_handed_over_to(options, match):
    with pytest.raises(EaqError, match=match):
        quantize_model_(_vit(), Plan.uniform(4, 8), _images(), "repq", options)
