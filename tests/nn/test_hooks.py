import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.nn.hooks import layer_calls


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)
        self.c = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)
        self.calls_b = self.calls_c = 0

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.calls_b += 1
        h = self.b(h)
        self.calls_c += 1
        return self.c(h)


def test_layer_calls_returns_inputs_and_outputs_and_stops_at_the_layer():
    torch.manual_seed(0)
    net = _Net()
    batches = [torch.randn(5, 4), torch.randn(2, 4)]
    inputs = layer_calls(net, "a", batches)
    assert [args[0].shape[0] for args, _ in inputs] == [5, 2]
    assert all(out is None for _, out in inputs)
    assert torch.equal(inputs[0][0][0], batches[0])
    assert net.calls_b == 0  # every pass stopped at layer a
    io = layer_calls(net, "b", batches, with_output=True)
    assert net.calls_c == 0  # every pass stopped after layer b's output
    for x, (args, out) in zip(batches, io, strict=True):
        h = torch.relu(net.a(x))
        assert torch.allclose(args[0], h)
        assert torch.allclose(out, net.b(h))


def test_layer_calls_keeps_copies():
    net = _Net()
    x = torch.randn(3, 4)
    ((args, _),) = layer_calls(net, "a", [x])
    x.zero_()
    assert args[0].abs().sum() > 0


def test_layer_calls_on_a_layer_never_reached_is_an_error():
    with pytest.raises(EaqError, match="never reached layer unused"):
        layer_calls(_Net(), "unused", [torch.randn(2, 4)])


def test_layer_calls_refuses_keyword_arguments():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(input=x)

    with pytest.raises(EaqError, match="layer a is called with keyword arguments"):
        layer_calls(Kw(), "a", [torch.randn(2, 4)])
