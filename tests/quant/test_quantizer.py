import json

import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.quant import (
    PerChannel,
    PerGroup,
    PerTensor,
    Quantizer,
    QuantSpec,
    calibration,
    fake_quantize,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


INT8 = QuantSpec(8)


class TwoQuant(nn.Module):
    """act quantizer -> linear -> ReLU -> act quantizer."""

    def __init__(self, spec=INT8):
        super().__init__()
        self.q_in = Quantizer(spec)
        self.fc = nn.Linear(8, 8)
        self.q_out = Quantizer(spec)

    def forward(self, x):
        return self.q_out(torch.relu(self.fc(self.q_in(x))))


def _batches(n=3):
    return [torch.randn(4, 8, generator=_gen(i)) for i in range(n)]


# ---------------------------------------------------------------- QuantSpec
@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(8),
        QuantSpec(4, symmetric=False, signed=True, granularity=PerChannel(0), observer="mse"),
        QuantSpec(3, signed=False, granularity=PerGroup(32, 2), observer="percentile"),
        QuantSpec(16, granularity=PerChannel(-1), observer="ema"),
    ],
)
def test_spec_json_round_trip(spec):
    text = json.dumps(spec.to_dict())
    assert QuantSpec.from_dict(json.loads(text)) == spec


@pytest.mark.parametrize("bits", [1, 17])
def test_spec_bad_bits(bits):
    with pytest.raises(EaqError, match=str(bits)):
        QuantSpec(bits)


def test_spec_unknown_observer_lists_names():
    with pytest.raises(EaqError, match="'foo'.*minmax"):
        QuantSpec(8, observer="foo")


def test_spec_from_dict_errors():
    with pytest.raises(EaqError, match="colour"):
        QuantSpec.from_dict({"bits": 8, "colour": "red"})
    with pytest.raises(EaqError, match="group:N"):
        QuantSpec.from_dict({"bits": 8, "granularity": "per-row"})
    with pytest.raises(EaqError, match="bits"):
        QuantSpec.from_dict({})


# ---------------------------------------------------------------- Quantizer
def test_uncalibrated_use_raises():
    q = Quantizer(QuantSpec(8))
    assert not q.is_calibrated
    with pytest.raises(RuntimeError, match="calibrat"):
        q(torch.randn(3))


def test_disabled_is_identity_even_uncalibrated():
    q = Quantizer(QuantSpec(2))
    q.enabled = False
    x = torch.randn(10)
    assert q(x) is x
    q.enabled = True
    q.calibrate_(x)
    q.enabled = False
    assert q(x) is x
    q.enabled = True
    assert not torch.equal(q(x), x)


def test_calibration_context_sets_buffers():
    model = TwoQuant()
    batches = _batches()
    with calibration(model):
        for b in batches:
            out = model(b)
            assert torch.equal(out, torch.relu(model.fc(b)))  # pass-through while calibrating
    x = torch.cat(batches)
    for q in (model.q_in, model.q_out):
        assert q.is_calibrated and not q.calibrating and q.observer is None
    assert float(model.q_in.scale) == pytest.approx(float(x.abs().max()) / 127)
    assert (int(model.q_in.quant_min), int(model.q_in.quant_max)) == (-128, 127)
    # after ReLU the automatic range is unsigned
    assert (int(model.q_out.quant_min), int(model.q_out.quant_max)) == (0, 255)
    relu_max = torch.relu(model.fc(x)).max().detach()
    assert float(model.q_out.scale) == pytest.approx(float(relu_max) / 255)
    y = model(batches[0])
    expected_in = fake_quantize(batches[0], model.q_in.scale, model.q_in.zero_point, -128, 127)
    assert torch.equal(model.q_in(batches[0]), expected_in)
    assert y.shape == (4, 8)


def test_state_dict_round_trip_into_fresh_module():
    spec = QuantSpec(4, symmetric=False, granularity=PerChannel(0), observer="mse")
    w = torch.randn(16, 32, generator=_gen(1))
    q = Quantizer(spec).calibrate_(w)
    assert q.scale.shape == (16, 1) and q.zero_point.dtype == torch.int32
    fresh = Quantizer(spec)
    assert fresh.scale.numel() == 0
    fresh.load_state_dict(q.state_dict())
    assert fresh.is_calibrated
    assert torch.equal(fresh(w), q(w))
    assert set(q.state_dict()) == {"scale", "zero_point", "quant_min", "quant_max"}

    # whole model, automatic (unsigned) range included
    model = TwoQuant()
    with calibration(model):
        for b in _batches():
            model(b)
    other = TwoQuant()
    other.load_state_dict(model.state_dict())
    x = torch.randn(5, 8, generator=_gen(9))
    assert int(other.q_out.quant_min) == 0
    assert torch.equal(other(x), model(x))


def test_empty_calibration_is_an_eaq_error_naming_the_quantizers():
    model = TwoQuant()
    with pytest.raises(EaqError, match=r"q_in.*q_out.*calibration set is empty"):
        with calibration(model):
            pass
    assert not model.q_in.calibrating and not model.q_in.is_calibrated


def test_unreached_quantizer_is_named():
    model = TwoQuant()
    with pytest.raises(EaqError, match=r"1 quantizer\(s\): q_out"):
        with calibration(model):
            model.q_in(torch.randn(2, 8))


def test_exception_in_body_restores_previous_state():
    model = TwoQuant()
    with calibration(model):
        model(torch.randn(2, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="boom"):
        with calibration(model):
            model(torch.randn(2, 8) * 100)
            raise ValueError("boom")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.q_in.calibrating and model.q_in.observer is None


def test_disabled_quantizers_are_skipped_by_calibration():
    model = TwoQuant()
    model.q_out.enabled = False
    with calibration(model):
        model(torch.randn(2, 8))
    assert model.q_in.is_calibrated and not model.q_out.is_calibrated
    model(torch.randn(2, 8))  # disabled: no error although uncalibrated


def test_recalibration_replaces_parameters():
    q = Quantizer(QuantSpec(8))
    q.calibrate_(torch.tensor([-1.0, 1.0]))
    q.calibrate_(torch.tensor([-2.0, 2.0]))
    assert float(q.scale) == pytest.approx(2.0 / 127)


def test_automatic_unsigned_after_relu_like_data():
    q = Quantizer(QuantSpec(8))
    q.calibrate_(torch.rand(100, generator=_gen(2)))
    assert int(q.quant_min) == 0 and q.signed is False
    assert "unsigned" in repr(q)
    q = Quantizer(QuantSpec(8, signed=True)).calibrate_(torch.rand(100, generator=_gen(2)))
    assert int(q.quant_min) == -128


def test_gradient_flows_through_quantizer():
    q = Quantizer(QuantSpec(8)).calibrate_(torch.tensor([-1.0, 1.0]))
    x = torch.tensor([0.5, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0]))


def test_extra_repr():
    q = Quantizer(QuantSpec(8, granularity=PerChannel(0)))
    assert repr(q) == (
        "Quantizer(bits=8, symmetric, signed=auto, per-channel(axis=0), observer=minmax, "
        "uncalibrated)"
    )
    q.calibrate_(torch.randn(4, 4, generator=_gen(3)))
    assert q.extra_repr() == "bits=8, symmetric, signed, per-channel(axis=0), observer=minmax"
    q = Quantizer(QuantSpec(4, symmetric=False, granularity=PerGroup(16)))
    assert "affine" in repr(q) and "per-group(size=16, axis=1)" in repr(q)


def test_per_tensor_scale_is_0d():
    q = Quantizer(QuantSpec(8, granularity=PerTensor())).calibrate_(torch.randn(4, 4))
    assert q.scale.shape == () and q.zero_point.shape == ()


def test_per_group_weight_quantizer_runs_and_matches_per_block_reference():
    from eaq.quant import PerGroup, Quantizer, QuantSpec
    from eaq.quant.primitives import choose_qparams, fake_quantize, quant_range

    torch.manual_seed(0)
    w = torch.randn(16, 64)
    q = Quantizer(QuantSpec(4, granularity=PerGroup(16), signed=True)).calibrate_(w)
    assert q.scale.shape == (16, 4)
    out = q(w)
    qmin, qmax = quant_range(4, True)
    for g in range(4):
        block = w[:, 16 * g : 16 * (g + 1)]
        s, z = choose_qparams(
            block.amin(1, keepdim=True), block.amax(1, keepdim=True), 4, symmetric=True, signed=True
        )
        ref = fake_quantize(block, s, z, qmin, qmax)
        assert torch.equal(out[:, 16 * g : 16 * (g + 1)], ref)
