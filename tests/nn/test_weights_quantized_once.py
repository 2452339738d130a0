"""weights_quantized_once: an evaluation quantizes each weight once, with the same outputs bit
for bit as quantizing it on every forward, and leaves the model as it found it."""

import torch

from eaq.evaluate import evaluate
from eaq.models import create_model
from eaq.nn import QuantConv2d, QuantLinear, calibrate_, quantize_, weights_quantized_once
from eaq.nn.layers import _FROZEN
from eaq.plan import Plan
from eaq.quant import Quantizer


def _frozen(layer) -> bool:
    return layer in _FROZEN


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(n)
    ]


def _quantized(bits: int = 4):
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", weights="random").eval()
    quantize_(model, Plan.uniform(bits, bits))
    calibrate_(model, _batches(2))
    return model


def _weight_calls(model, monkeypatch) -> list:
    """Count the weight quantizers' forward calls (Quantizer.forward is what q(w) runs)."""
    weight_qs = {
        id(m.weight_quantizer)
        for m in model.modules()
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer is not None
    }
    calls = []
    forward = Quantizer.forward

    def counting(self, x):
        if id(self) in weight_qs:
            calls.append(id(self))
        return forward(self, x)

    monkeypatch.setattr(Quantizer, "forward", counting)
    return calls


def test_same_outputs_bit_for_bit_and_each_weight_quantized_once(monkeypatch):
    model = _quantized()
    batches = _batches()
    with torch.no_grad():
        want = [model(x) for x, _ in batches]
    n_layers = sum(
        1
        for m in model.modules()
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer is not None
    )
    calls = _weight_calls(model, monkeypatch)
    with torch.no_grad(), weights_quantized_once(model):
        got = [model(x) for x, _ in batches]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert len(calls) == n_layers == len(set(calls))  # once per layer, not once per batch

    calls.clear()
    with torch.no_grad():
        model(batches[0][0])
    assert len(calls) == n_layers  # outside the block: every forward quantizes again


def test_evaluate_uses_it_and_gives_the_same_accuracy(monkeypatch):
    model = _quantized()
    batches = _batches()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    calls = _weight_calls(model, monkeypatch)
    result = evaluate(model, batches, progress=False)
    assert result.top1 == 100.0 * hits / 12
    assert len(calls) == len(set(calls))


def test_model_changed_after_the_block_is_seen():
    model = _quantized()
    x = _batches(1)[0][0]
    with torch.no_grad(), weights_quantized_once(model):
        before = model(x)
    conv = next(m for m in model.modules() if isinstance(m, QuantConv2d))
    with torch.no_grad():
        conv.weight.mul_(-1.0)
        after = model(x)
    assert not torch.equal(before, after)
    assert not _frozen(conv)


def test_copies_made_inside_and_nested_blocks():
    import copy

    model = _quantized()
    x = _batches(1)[0][0]
    with torch.no_grad(), weights_quantized_once(model):
        twin = copy.deepcopy(model)
        with weights_quantized_once(model):
            pass
        assert all(_frozen(m) for m in model.modules() if isinstance(m, QuantConv2d))
    conv = next(m for m in twin.modules() if isinstance(m, QuantConv2d))
    with torch.no_grad():
        before = twin(x)
        conv.weight.mul_(-1.0)
        assert not torch.equal(before, twin(x))  # the copy quantizes its own, changed weight


def test_calibrating_and_disabled_quantizers_are_not_frozen():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", weights="random").eval()
    quantize_(model, Plan.uniform(8, 8))
    layers = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    for m in layers:
        m.weight_quantizer.start_calibration()
    with weights_quantized_once(model):
        assert not any(_frozen(m) for m in layers)
    calibrate_(model, _batches(1))
    layers[0].weight_quantizer.enabled = False
    with weights_quantized_once(model):
        assert not _frozen(layers[0])
        assert all(_frozen(m) for m in layers[1:])
