"""Ranking-aware PTQ (Liu et al. 2021): the loss by hand, a monotone search, tiny models."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eaq.errors import EaqError
from eaq.methods import quantize_model_
from eaq.methods.ranking import (
    RankingConfig,
    float_reference,
    pearson,
    rank_search_,
    ranking_loss,
    search_layer_,
)
from eaq.nn import QuantLinear, calibrate_, quantize_
from eaq.plan import LayerConfig, Plan

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()


def _calib(n_batches=2, size=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, size, size, generator=g), None) for _ in range(n_batches)]


def test_ranking_loss_by_hand():
    theta = 0.5
    # order kept with margin >= theta: free; kept with a smaller margin: theta - margin
    assert float(ranking_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.5, 1.0]]), theta)) == 0
    kept = ranking_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.2, 1.0]]), theta)
    assert float(kept) == pytest.approx(0.3)
    # flipped by 0.2: theta + 0.2; collapsed to a tie: theta
    flip = ranking_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 1.2]]), theta)
    assert float(flip) == pytest.approx(0.7)
    tie = ranking_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 1.0]]), theta)
    assert float(tie) == pytest.approx(0.5)
    # three keys: pairs (0,1), (0,2) kept by 2 and 1; (1,2) flipped by 1 -> 1.5; mean over 3
    f, q = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[3.0, 1.0, 2.0]])
    assert float(ranking_loss(f, q, theta)) == pytest.approx(1.5 / 3)
    # rows are averaged: [B, heads, queries, keys] works
    both = ranking_loss(
        torch.stack([f, f]).reshape(2, 1, 1, 3), torch.stack([f, q]).reshape(2, 1, 1, 3), theta
    )
    assert float(both) == pytest.approx(0.25)


def test_layer_search_never_lowers_pearson():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(256, 16) * torch.linspace(0.2, 3.0, 16)
    x[0, 0] = 30.0  # an outlier that stretches the min-max input range
    target = linear(x).detach()
    layer = QuantLinear.from_float(copy.deepcopy(linear), LayerConfig(4, 4))
    layer.weight_quantizer.calibrate_(layer.weight)
    layer.input_quantizer.calibrate_(x)
    with torch.no_grad():
        ptq = pearson(target, layer(x))
    alphas = RankingConfig(search_steps=20).alphas()
    before, after, chosen = search_layer_(layer, [x], lambda y: pearson(target, y), alphas, 2)
    assert before == pytest.approx(ptq)
    with torch.no_grad():
        assert pearson(target, layer(x)) == pytest.approx(after)
    assert after > before  # the outlier leaves room to improve
    assert len(chosen) == 2 and chosen[1] < 1.0  # the input range shrinks


def test_rank_search_is_monotone_on_every_vit_layer():
    model, calib = _vit(), _calib()
    reference = float_reference(model)
    quantize_(model, Plan.uniform(4, 4, softmax_quantizer="twin", gelu_quantizer="twin"))
    calibrate_(model, calib)
    rows = rank_search_(model, reference, calib, RankingConfig(search_steps=8, rounds=1))
    kinds = [r.kind for r in rows]
    assert kinds.count("matmul") == 4 and kinds.count("linear") == 9
    assert all(r.after >= r.before for r in rows)
    assert any(r.after > r.before for r in rows)


def test_quantize_model_ranking_on_a_tiny_vit(caplog):
    caplog.set_level(logging.INFO, logger="eaq")
    model, calib = _vit(), _calib()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    summary = quantize_model_(
        model, Plan.uniform(4, 4), calib, "ranking", {"search_steps": 10, "rounds": 1}
    )
    assert summary.n_quantized == summary.n_layers
    assert "ranking: scales of" in caplog.text
    with torch.no_grad():
        out = model(x)
    assert pearson(ref, out) > 0.9


def test_ranking_on_a_cnn_with_bias_correction():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    calib = _calib(1, size=8)
    x = calib[0][0]
    with torch.no_grad():
        ref = model(x)
    options = {"search_steps": 5, "rounds": 1, "bias_correction": True}
    quantize_model_(model, Plan.uniform(4, 4), calib, "ranking", options)
    with torch.no_grad():
        assert pearson(ref, model(x)) > 0.9


def test_options_are_validated():
    with pytest.raises(EaqError, match="no option"):
        quantize_model_(_vit(), Plan.uniform(8, 8), _calib(1), "ranking", {"steps": 3})
    with pytest.raises(EaqError, match="low"):
        quantize_model_(_vit(), Plan.uniform(8, 8), _calib(1), "ranking", {"low": 2.0})
