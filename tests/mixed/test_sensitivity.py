"""Sensitivity: hook-based S_l equals a layer-by-layer reference; costs no pass per layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.mixed import Sensitivity, candidate_grid, layer_sensitivity
from eaq.nn import calibrate_, quantize_
from eaq.plan import LayerConfig, Plan
from tests.small_models import resnet20, vit


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _calib(n_batches=2):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 8, 8, generator=g), torch.zeros(4, dtype=torch.long))
        for _ in range(n_batches)
    ]


@pytest.mark.parametrize("stride", [1, 3])
def test_l2_matches_reference_single_layer_quantization(stride, monkeypatch):
    """Stride 1: the full sum; stride 3 (the default): the sum over every 3rd image, scaled."""
    import eaq.mixed.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "IMAGE_STRIDE", stride)
    model, calib = _tiny(), _calib()
    cands = [(4, 4), (8, 8)]
    s = layer_sensitivity(model, calib, cands)
    assert s.names == ("0", "2", "6") and s.values.shape == (3, 2)
    for i, name in enumerate(s.names):
        for j, (w, a) in enumerate(cands):
            # reference: quantize only this layer, calibrate, compare its output on float inputs
            q = copy.deepcopy(model)
            quantize_(
                q, Plan(default=None, rules=((name, LayerConfig(w, a)),), first_last_8bit=False)
            )
            calibrate_(q, calib)
            layer_q, layer_f = q.get_submodule(name), model.get_submodule(name)
            sq = 0.0
            inputs: dict = {}
            for x, _ in calib:
                inputs.clear()
                h = layer_f.register_forward_pre_hook(
                    lambda m, inp, box=inputs: box.update(x=inp[0])  # returns None: inp kept
                )
                with torch.no_grad():
                    model(x)
                    h.remove()
                    kept = inputs["x"][::stride]
                    err = (layer_q(kept) - layer_f(kept)).double().pow(2).sum()
                    sq += float(err) * x.shape[0] / kept.shape[0]
            assert s.values[i, j] == pytest.approx(np.sqrt(sq), rel=1e-4)
    assert (s.values[:, 0] > s.values[:, 1]).all()  # 4 bits hurt more than 8


def test_l2_runs_two_model_passes_only():
    model, calib = _tiny(), _calib(3)
    calls = []
    h = model.register_forward_pre_hook(lambda m, inp: calls.append(1))
    layer_sensitivity(model, calib, candidate_grid([4, 6, 8]))
    h.remove()
    # the model copy is hooked, not the original: count passes on the copy's first layer
    counted = []
    orig = nn.Conv2d.forward

    def count(self, x):
        counted.append(1)
        return orig(self, x)

    nn.Conv2d.forward = count
    try:
        layer_sensitivity(model, calib, candidate_grid([4, 6, 8]))
    finally:
        nn.Conv2d.forward = orig
    assert len(counted) == 2 * 2 * len(calib)  # 2 conv layers x 2 passes x batches


def test_kl_measure_and_round_trip():
    model, calib = _tiny(), _calib(1)
    s = layer_sensitivity(model, calib, [(4, 4), (8, 8)], measure="kl")
    assert s.measure == "kl" and (s.values >= 0).all()
    back = Sensitivity.from_rows(s.to_rows())
    assert back.names == s.names and np.allclose(back.values, s.values)
    assert back.column((4, 4)).shape == (3,)
    with pytest.raises(EaqError, match="W6A6"):
        back.column((6, 6))


def _tiny_vit() -> nn.Module:
    return vit(depth=1)


def _vit_2_blocks() -> nn.Module:
    return vit(depth=2)


_resnet20 = resnet20


@pytest.mark.parametrize("build", [_tiny, _tiny_vit, _vit_2_blocks, _resnet20])
def test_kl_equals_whole_model_calibration_per_layer(build):
    """The KL measure calibrates the one quantized layer on its cached float inputs and starts
    each pass at the layer's block (the blocks before it replayed); the reference calibrates
    the whole single-layer-quantized model and runs it whole, as a plain PTQ run would."""
    from dataclasses import replace

    import torch.nn.functional as F

    from eaq.mixed.sensitivity import _explicit_copy

    model, calib = build(), _calib(2)
    cands = [(4, 4), (8, 8)]
    s = layer_sensitivity(model, calib, cands, measure="kl")
    work = _explicit_copy(model)
    ref_logp = [F.log_softmax(work(x).double(), dim=1) for x, _ in calib]
    n = sum(x.shape[0] for x, _ in calib)
    for i, name in enumerate(s.names):
        for j, (w, a) in enumerate(cands):
            single = copy.deepcopy(model)
            cfg = replace(LayerConfig(), w_bits=w, a_bits=a)
            quantize_(single, Plan(default=None, rules=((name, cfg),), first_last_8bit=False))
            calibrate_(single, calib)
            with torch.no_grad():
                kl = sum(
                    float((lp.exp() * (lp - F.log_softmax(single(x).double(), 1))).sum())
                    for (x, _), lp in zip(calib, ref_logp, strict=True)
                )
            assert s.values[i, j] == pytest.approx(kl / n, rel=1e-9, abs=1e-12), (name, w)


def test_bad_measure_and_empty_candidates():
    with pytest.raises(EaqError, match="measure"):
        layer_sensitivity(_tiny(), _calib(), [(4, 4)], measure="hessian")
    with pytest.raises(EaqError, match="candidate"):
        layer_sensitivity(_tiny(), _calib(), [])


def test_candidate_grid():
    assert candidate_grid([8, 4]) == [(4, 4), (8, 8)]
    assert candidate_grid([4], [4, 8]) == [(4, 4), (4, 8)]


# ---------------------------------------------------------------- nuclear (Liu et al. 2021)
def test_output_nuclear_norm_matches_numpy():
    from eaq.mixed.sensitivity import output_nuclear_norm

    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 5, 3, generator=g)  # linear output: 2 images, 5 tokens, 3 channels
    want = [np.linalg.norm(y[i].double().numpy(), "nuc") for i in range(2)]
    np.testing.assert_allclose(output_nuclear_norm(y, "linear").numpy(), want, rtol=1e-5)
    conv = torch.randn(2, 3, 4, 4, generator=g)  # [B, C, H, W] -> [HW, C] per image
    want = [np.linalg.norm(conv[i].reshape(3, 16).T.double().numpy(), "nuc") for i in range(2)]
    np.testing.assert_allclose(output_nuclear_norm(conv, "conv").numpy(), want, rtol=1e-5)
    heads = torch.randn(2, 2, 4, 4, generator=g)  # matmul: one matrix per head, summed
    want = [
        sum(np.linalg.norm(heads[i, h].double().numpy(), "nuc") for h in range(2)) for i in range(2)
    ]
    np.testing.assert_allclose(output_nuclear_norm(heads, "matmul").numpy(), want, rtol=1e-5)
    assert float(output_nuclear_norm(torch.tensor([[3.0, 4.0]]), "linear")) == pytest.approx(5.0)


def test_nuclear_measure_is_l2_squared_times_mean_nuclear_norm():
    from eaq.mixed.sensitivity import output_nuclear_norm

    model, calib = _tiny(), _calib()
    cands = [(4, 4), (6, 6), (8, 8)]
    s = layer_sensitivity(model, calib, cands, measure="nuclear")
    l2 = layer_sensitivity(model, calib, cands)
    assert s.measure == "nuclear" and s.values.shape == (3, 3) and np.isfinite(s.values).all()
    assert (s.values[:, 0] > s.values[:, 1]).all() and (s.values[:, 1] > s.values[:, 2]).all()
    n = sum(x.shape[0] for x, _ in calib)
    outs: list = []
    h = model[2].register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    h.remove()
    nuc = sum(float(output_nuclear_norm(o, "conv").sum()) for o in outs) / n
    np.testing.assert_allclose(s.values[1], nuc * l2.values[1] ** 2 / n, rtol=1e-5)


def test_nuclear_measure_on_a_tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()
    calib = [(torch.randn(4, 3, 16, 16), None)]
    s = layer_sensitivity(vit, calib, [(4, 4), (8, 8)], measure="nuclear")
    assert "blocks.0.attn.qk_matmul" in s.names and np.isfinite(s.values).all()
    assert (s.values[:, 0] >= s.values[:, 1]).all() and (s.values >= 0).all()


def test_kl_passes_start_at_the_layers_block(monkeypatch):
    """Blocks before the quantized layer are replayed, not run: on resnet20_cifar's 9 blocks
    the measure computes under 60% of the blocks it computes with replaying switched off, and
    gives the same values."""
    import contextlib

    from eaq.models import BasicBlockA
    from eaq.nn.hooks import PrefixReplay

    model, calib = _resnet20(), _calib(1)
    ran = []
    forward = BasicBlockA.forward
    monkeypatch.setattr(BasicBlockA, "forward", lambda self, x: ran.append(1) or forward(self, x))
    s = layer_sensitivity(model, calib, [(4, 4)], measure="kl")
    replayed = len(ran)
    ran.clear()
    monkeypatch.setattr(PrefixReplay, "skipping", lambda *_: contextlib.nullcontext())
    whole = layer_sensitivity(model, calib, [(4, 4)], measure="kl")
    assert np.allclose(s.values, whole.values, rtol=1e-9, atol=1e-12)
    assert 0 < replayed < 0.6 * len(ran)
