"""Block reconstruction (BRECQ) and QDrop: units, the activation wrapper, one residual block."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.methods.adaround import AdaRoundConfig, AdaRoundWeight, prepare_
from eaq.methods.reconstruction import (
    ReconActQuantizer,
    ReconstructionConfig,
    keep_mask,
    lsq_fake_quantize,
    reconstruct_,
    reconstruction_units,
)
from eaq.models import BasicBlockA, ResNetCifar
from eaq.nn import QuantConv2d
from eaq.plan import Plan
from eaq.quant import Quantizer, QuantSpec

from .helpers import correlated


def test_units_of_resnet20_style_model():
    model = ResNetCifar(blocks=(2, 1, 1)).eval()
    prepare_(model, Plan.uniform(4, 4), [(torch.randn(2, 3, 8, 8), torch.zeros(2))])
    assert reconstruction_units(model) == [
        "conv1",
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer3.0",
        "linear",
    ]


def test_units_of_torchvision_and_timm_blocks():
    from timm.models.vision_transformer import Block
    from torchvision.models.resnet import BasicBlock

    model = nn.Sequential(nn.Conv2d(3, 8, 1), BasicBlock(8, 8), nn.Flatten(2))
    prepare_(model, Plan.uniform(4, 4), [(torch.randn(2, 3, 4, 4), torch.zeros(2))])
    assert reconstruction_units(model) == ["0", "1"]
    from torchvision.models.mobilenetv2 import InvertedResidual

    mbv2 = nn.Sequential(nn.Conv2d(3, 8, 1), InvertedResidual(8, 8, 1, 6)).eval()
    prepare_(mbv2, Plan.uniform(4, 4), [(torch.randn(2, 3, 4, 4), torch.zeros(2))])
    assert reconstruction_units(mbv2) == ["0", "1"]
    vit = nn.Sequential(Block(16, 2), Block(16, 2)).eval()
    prepare_(vit, Plan.uniform(4, 4), [(torch.randn(2, 5, 16), torch.zeros(2))])
    assert reconstruction_units(vit) == ["0", "1"]


def test_act_wrapper_matches_quantizer_when_nothing_is_learned_or_dropped():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    q = Quantizer(QuantSpec(bits=4)).calibrate_(x)
    w = ReconActQuantizer(q, learn_scale=True)
    torch.testing.assert_close(w(x), q(x), atol=1e-6, rtol=0)
    # QDrop: about half the elements pass through unquantized
    w.drop_prob = 0.5
    kept = (w(x) == x) & (q(x) != x)
    assert 0.3 < kept.float().mean() / (q(x) != x).float().mean() < 0.7
    with torch.no_grad():
        w.scale.mul_(1.5)
    assert w.write_back() is q
    assert torch.equal(q.scale, w.scale.detach())


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("zero_point", [0.0, -2.0, 3.0])
def test_lsq_fake_quantize_follows_lsq_and_qdrop(per_channel, drop, zero_point):
    """Output and gradients against LSQ's definition written out: codes ``round(x/s) + z``
    clamped to [qmin, qmax]; the gradient to x passes where the code is inside the range (or
    the element is kept in float), the gradient to s is ``round(x/s) - x/s`` inside and
    ``code - z`` outside, summed over what s covers, zero where kept."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 4, 5, 5, generator=g) * 3 + 1).requires_grad_(True)
    shape = (1, 4, 1, 1) if per_channel else ()
    values = torch.tensor([0.5, 0.9, 1.2, 0.7]) if per_channel else torch.tensor(0.87)
    s = values.reshape(shape).clone().requires_grad_(True)
    z = torch.full(shape, zero_point)
    keep = keep_mask(x, 0.5, torch.Generator().manual_seed(1)) if drop else torch.zeros_like(x)
    weights = torch.linspace(-1, 2, x.numel()).reshape(x.shape)
    out = lsq_fake_quantize(x, s, z, -8, 7, keep if drop else None)
    (out * weights).sum().backward()
    with torch.no_grad():
        t = x / s
        code = t.round() + z
        inside = (code >= -8) & (code <= 7)
        clamped = code.clamp(-8, 7)
        want = keep * x + (1 - keep) * (clamped - z) * s
        want_gx = weights * torch.where(keep.bool() | inside, 1.0, 0.0)
        per_elem = weights * (1 - keep) * torch.where(inside, t.round() - t, clamped - z)
        want_gs = per_elem.sum((0, 2, 3)).reshape(shape) if per_channel else per_elem.sum()
    torch.testing.assert_close(out.detach(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(x.grad, want_gx, rtol=0, atol=0)
    torch.testing.assert_close(s.grad, want_gs, rtol=1e-4, atol=1e-3)
    assert bool((s.grad != 0).all())
    assert bool(((x.grad == 0) & (weights != 0)).any())  # some elements clipped


def test_keep_mask_compares_16_bit_draws_with_the_probability():
    x = torch.empty(1000)
    mask = keep_mask(x, 0.3, torch.Generator().manual_seed(5))
    words = torch.randint(
        -(1 << 63),
        (1 << 63) - 1,
        (250,),
        dtype=torch.int64,
        generator=torch.Generator().manual_seed(5),
    )
    u = words.view(torch.int16).long() + 32768  # uniform in [0, 65536)
    assert torch.equal(mask, (u < round(0.3 * 65536)).float())


@pytest.mark.parametrize("prob", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_with_the_probability_in_the_layout_of_x(prob):
    x = torch.empty(64, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    mask = keep_mask(x, prob, torch.Generator().manual_seed(0))
    assert mask.shape == x.shape and mask.stride() == x.stride()
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.mean().item() - prob) < 0.005  # 409,600 draws: sd < 0.0008
    # neighbours in memory are independent: no structure along the channel axis
    assert abs((mask[:, :-1] * mask[:, 1:]).mean().item() - prob**2) < 0.005


def _block_model():
    torch.manual_seed(0)
    model = nn.Sequential(BasicBlockA(8, 8)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics to fold
        for bn in (model[0].bn1, model[0].bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    calib = [(correlated(48, 8, 6, seed=1, positive=True), torch.zeros(48))]
    return model, calib


@pytest.mark.parametrize(
    "drop_prob, precision",
    [(0.0, "fp32"), (0.5, "fp32"), (0.5, "bf16")],
    ids=["brecq", "qdrop", "qdrop-bf16"],
)
def test_block_reconstruction_beats_round_to_nearest(drop_prob, precision):
    model, calib = _block_model()
    plan = Plan.uniform(3, 4, first_last_8bit=False)
    _, float_model = prepare_(model, plan, calib)
    rtn = copy.deepcopy(model)
    # lr 1e-2 (not the default 1e-3) so that a few hundred steps converge
    config = ReconstructionConfig(
        AdaRoundConfig(iters=250, batch_size=16, lr=1e-2, precision=precision),
        drop_prob=drop_prob,
    )
    [stats] = reconstruct_(model, float_model, calib, config)
    assert stats.name == "0"

    x = calib[0][0]
    with torch.no_grad():
        target = float_model(x)
        err_rtn = (rtn(x) - target).pow(2).mean()
        err_rec = (model(x) - target).pow(2).mean()
    assert err_rec < 0.9 * err_rtn
    assert stats.error_after < stats.error_before
    # nothing of the reconstruction machinery is left behind; weights sit on their grids
    assert not any(isinstance(m, AdaRoundWeight | ReconActQuantizer) for m in model.modules())
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            assert isinstance(m.weight_quantizer, Quantizer)
            assert isinstance(m.input_quantizer, Quantizer)
            assert torch.equal(m.weight_quantizer(m.weight), m.weight)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_sets_the_dtype_of_the_optimisation_only(precision):
    """bf16: the convolutions of the optimisation steps take bfloat16 inputs; the errors
    reported before and after, and the weights written back, are float32."""
    model, calib = _block_model()
    _, float_model = prepare_(model, Plan.uniform(4, 4, first_last_8bit=False), calib)
    seen = []
    hook = model[0].conv2.register_forward_hook(
        lambda m, args, out: seen.append((torch.is_grad_enabled(), out.dtype))
    )
    config = ReconstructionConfig(AdaRoundConfig(iters=5, batch_size=16, precision=precision))
    reconstruct_(model, float_model, calib, config)
    hook.remove()
    steps = {dtype for grad, dtype in seen if grad}
    errors = {dtype for grad, dtype in seen if not grad}
    assert steps == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert errors == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_precision_is_checked():
    with pytest.raises(EaqError, match="precision must be one of fp32, bf16, got 'fp16'"):
        AdaRoundConfig(precision="fp16")


def test_learned_act_scales_are_written_back():
    model, calib = _block_model()
    _, float_model = prepare_(model, Plan.uniform(4, 3, first_last_8bit=False), calib)
    before = model[0].conv2.input_quantizer.scale.clone()
    config = ReconstructionConfig(AdaRoundConfig(iters=30, batch_size=16), act_lr=1e-2)
    reconstruct_(model, float_model, calib, config)
    after = model[0].conv2.input_quantizer.scale
    assert after.shape == before.shape and not torch.equal(after, before)
    assert (after > 0).all()


def test_vit_block_reconstruction_runs():
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    model = nn.Sequential(Block(16, 2, mlp_ratio=2.0)).eval()
    calib = [(torch.randn(16, 5, 16), torch.zeros(16))]
    _, float_model = prepare_(model, Plan.uniform(4, 6, first_last_8bit=False), calib)
    config = ReconstructionConfig(AdaRoundConfig(iters=40, batch_size=8), drop_prob=0.5)
    [stats] = reconstruct_(model, float_model, calib, config)
    assert stats.n_weights == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)
    )
    assert stats.error_after <= stats.error_before * 1.05
    assert not any(isinstance(m, AdaRoundWeight | ReconActQuantizer) for m in model.modules())
