"""GPTQ weight rounding."""

import copy

import pytest
import torch
from torch import nn

from eaq.methods import quantize_model_
from eaq.methods.gptq import gptq_
from eaq.nn import calibrate_, quantize_
from eaq.plan import Plan
from eaq.quant import PerChannel, PerGroup


def _correlated(shape, n=4, seed=0):
    """Inputs with correlated channels (where GPTQ's error feedback pays off)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    mix = torch.randn(c, c, generator=g) / c**0.5 + torch.eye(c)
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=g)
        x = torch.einsum("ij,bj...->bi...", mix, x)
        out.append((x, torch.zeros(shape[0])))
    return out


def _errors(layer_ctor, shape, granularity, bits=3):
    torch.manual_seed(0)
    ref = nn.Sequential(layer_ctor()).eval()
    calib = _correlated(shape)
    plan = Plan.uniform(bits, None, granularity=granularity, first_last_8bit=False)
    rtn, gq = copy.deepcopy(ref), copy.deepcopy(ref)
    quantize_(rtn, plan)
    calibrate_(rtn, calib)
    quantize_(gq, plan)
    names = gptq_(gq, calib)
    x = torch.cat([b for b, _ in calib])
    with torch.no_grad():
        y = ref(x)
        e_rtn = (rtn(x) - y).square().mean().item()
        e_gptq = (gq(x) - y).square().mean().item()
        w = gq[0].weight.detach().clone()
        idempotent = torch.equal(gq[0].weight_quantizer(w), w)
    return names, e_rtn, e_gptq, idempotent


@pytest.mark.parametrize("granularity", [PerChannel(0), PerGroup(16)])
def test_linear_beats_round_to_nearest(granularity):
    names, e_rtn, e_gptq, idem = _errors(lambda: nn.Linear(64, 16), (128, 64), granularity)
    assert names == ["0"]
    assert e_gptq < 0.8 * e_rtn
    assert idem


def test_conv_beats_round_to_nearest():
    names, e_rtn, e_gptq, idem = _errors(
        lambda: nn.Conv2d(8, 8, 3, padding=1), (8, 8, 8, 8), PerChannel(0)
    )
    assert names == ["0"]
    assert e_gptq < 0.8 * e_rtn
    assert idem


def test_method_on_a_small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8)
    ).eval()
    calib = _correlated((4, 3, 8, 8), n=2)
    summary = quantize_model_(model, Plan.uniform(4, 8), calib, method="gptq")
    assert summary.n_quantized == 2
    assert torch.isfinite(model(calib[0][0])).all()


def test_act_order_rounds_the_heaviest_columns_first(monkeypatch):
    import eaq.methods.gptq as gptq_module

    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(32, 8)).eval()
    calib = _correlated((64, 32))
    with torch.no_grad():  # make the Hessian's diagonal strongly uneven
        for x, _ in calib:
            x[:, :4] *= 10
    plan = Plan.uniform(3, None, first_last_8bit=False)
    outs = {}
    for order in (False, True):
        m = copy.deepcopy(layer)
        quantize_(m, plan)
        gptq_(m, calib, sequential=False, act_order=order)
        outs[order] = m[0].weight.detach().clone()
    assert not torch.equal(outs[False], outs[True])
    seen = []
    real = gptq_module._fake_quantize_impl

    def spy(w, *args, **kwargs):
        seen.append(w.clone())
        return real(w, *args, **kwargs)

    monkeypatch.setattr(gptq_module, "_fake_quantize_impl", spy)
    m = copy.deepcopy(layer)
    quantize_(m, plan)
    gptq_(m, calib, sequential=False, act_order=True)
    first = seen[0][:, 0]  # the first column rounded is one of the four heavy inputs
    w0 = layer[0].weight.detach()
    assert min(float((first - w0[:, j]).abs().max()) for j in range(4)) < 1e-6


def test_sequential_hessians_come_from_the_quantized_model(monkeypatch):
    import eaq.methods.gptq as gptq_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    calib = _correlated((32, 16), n=2)
    plan = Plan.uniform(3, 4, first_last_8bit=False)
    seen = {}
    real = gptq_module.gptq_quantize_weight

    def record(layer, H, **kwargs):
        seen[id(layer)] = H.clone()
        return real(layer, H, **kwargs)

    monkeypatch.setattr(gptq_module, "gptq_quantize_weight", record)
    m = copy.deepcopy(model)
    quantize_(m, plan)
    gptq_(m, calib, sequential=True, act_order=False)
    x = torch.cat([b for b, _ in calib])
    with torch.no_grad():  # layer 2's input in the model as rounded: quantized, layer 1 GPTQ'd
        inp = m[2].input_quantizer(m[1](m[0](x))).double()
    expected = 2 * inp.t() @ inp / inp.shape[0]
    torch.testing.assert_close(seen[id(m[2])], expected)
    # the float model's input to layer 2 gives another Hessian
    with torch.no_grad():
        f = model[1](model[0](x)).double()
    assert not torch.allclose(seen[id(m[2])], 2 * f.t() @ f / f.shape[0])


def _float_target_errors(bits_w, bits_a):
    """Output MSE against the float model after GPTQ with each target (two linears, coarse
    activations, so the second layer's inputs carry the first's and their own quantization)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    calib = _correlated((256, 32), n=4)
    plan = Plan.uniform(bits_w, bits_a, first_last_8bit=False)
    x = torch.cat([b for b, _ in calib])
    errors = {}
    for target in ("quantized", "float"):
        m = copy.deepcopy(ref)
        quantize_model_(m, plan, calib, method="gptq", options={"target": target})
        with torch.no_grad():
            errors[target] = (m(x) - ref(x)).square().mean().item()
    return errors


def test_float_target_compensates_the_activations_error():
    # GPTAQ's objective ||W X - Q X_q||: with 3-bit activations it leaves a far smaller output
    # error than GPTQ's ||W X_q - Q X_q||, which only sees the weights' own rounding
    errors = _float_target_errors(8, 3)
    assert errors["float"] < 0.7 * errors["quantized"]


def test_float_target_least_squares_weight():
    # before rounding, the float target moves W to the least-squares fit of W X on the
    # quantized inputs X_q; at 16 bits the rounding is negligible, so the stored weight must be
    # that fit (and not W, which plain GPTQ would keep)
    from eaq.methods.gptq import gptq_quantize_weight

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 4)).eval()
    X = torch.randn(2000, 16, dtype=torch.float64)
    Xq = X.round()  # the inputs on a coarse activation grid
    quantize_(m, Plan.uniform(16, None, first_last_8bit=False))
    calibrate_(m, [(X.float(), torch.zeros(2000))])
    W = m[0].weight.detach().double().clone()
    H = 2 * Xq.t() @ Xq / 2000
    D = 2 * (X - Xq).t() @ Xq / 2000
    gptq_quantize_weight(m[0], H, D=D, percdamp=1e-9)
    fit = torch.linalg.lstsq(Xq, X @ W.t()).solution.t()
    torch.testing.assert_close(m[0].weight.detach().double(), fit, atol=1e-4, rtol=0)
    assert (fit - W).abs().max() > 1e-2


def test_float_target_without_sequential_is_an_error():
    from eaq.errors import EaqError

    m = nn.Sequential(nn.Linear(8, 4)).eval()
    quantize_(m, Plan.uniform(4, 8, first_last_8bit=False))
    with pytest.raises(EaqError, match="needs sequential"):
        gptq_(m, _correlated((16, 8)), sequential=False, float_model=copy.deepcopy(m))


def test_bias_correction_removes_the_mean_shift_gptq_leaves():
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1)
    ).eval()
    with torch.no_grad():  # a BatchNorm that is not the identity, so folding matters
        ref[1].running_mean.uniform_(-0.5, 0.5)
        ref[1].running_var.uniform_(0.5, 2.0)
    calib = _correlated((8, 8, 8, 8))
    x = torch.cat([b for b, _ in calib])
    plan = Plan.uniform(3, None, first_last_8bit=False)
    errors = {}
    for bc in (False, True):
        model = copy.deepcopy(ref)
        quantize_model_(model, plan, calib, method="gptq", options={"bias_correction": bc})
        with torch.no_grad():
            errors[bc] = (model(x) - ref(x)).mean((0, 2, 3)).abs().max().item()
    assert errors[False] > 1e-3
    assert errors[True] < 1e-4
