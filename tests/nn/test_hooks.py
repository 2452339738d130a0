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


class _Counted(nn.Linear):
    """A linear 'block' that counts the times it really computes (copies count on)."""

    def forward(self, x):
        self.computed += 1
        return super().forward(x)


class _Chain(nn.Module):
    """Three residual blocks and a head."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[_Counted(4, 4) for _ in range(3)])
        self.head = nn.Linear(4, 2)
        self.reset()

    def reset(self):
        for b in self.blocks:
            b.computed = 0

    def counts(self):
        return [b.computed for b in self.blocks]

    def forward(self, x):
        for b in self.blocks:
            x = x + torch.tanh(b(x))
        return self.head(x)


def test_prefix_replay_skips_the_blocks_before_a_layer_and_changes_no_value():
    import copy

    from eaq.nn.hooks import PrefixReplay

    torch.manual_seed(0)
    net = _Chain().eval()
    batches = [torch.randn(5, 4), torch.randn(3, 4)]
    replay = PrefixReplay.record(net, ["blocks.0", "blocks.1", "blocks.2"], batches)
    assert all(torch.equal(z, net(x)) for z, x in zip(replay.model_outputs, batches, strict=True))
    assert replay.blocks_before("blocks.2") == ["blocks.0", "blocks.1"]
    assert replay.blocks_before("head") == ["blocks.0", "blocks.1", "blocks.2"]
    assert replay.blocks_before("blocks.0") == []
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.blocks[2].weight.mul_(2)  # only the block from which the pass starts differs
        expected = [changed(x) for x in batches]
        changed.reset()
        with replay.skipping(changed, "blocks.2"):
            for _ in range(2):  # the same batches again, in order
                got = [changed(x) for x in batches]
                assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    assert changed.counts() == [0, 0, 4]  # blocks 0 and 1 never ran
    assert torch.equal(changed(batches[0]), expected[0]) and changed.counts()[0] == 1  # restored
    with pytest.raises(EaqError, match="batch of 5 for an input of 3"):
        with replay.skipping(changed, "head"):
            changed(batches[1])
    with pytest.raises(EaqError, match="did not run"):
        replay.blocks_before("nothing")


class _Twice(nn.Module):
    """A model whose 'block' runs twice a pass."""

    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


def test_prefix_replay_leaves_out_a_block_that_runs_twice():
    from eaq.nn.hooks import PrefixReplay

    replay = PrefixReplay.record(_Twice().eval(), ["block"], [torch.randn(2, 4)])
    assert replay.blocks_before("head") == []


def test_progressive_replay_replays_finished_blocks_of_a_model_that_changes():
    """A method walks the layers in order, measures each on passes that stop at it, then changes
    it. With the replay, each finished block is computed once more (when it is recorded) and the
    measured inputs are exactly those of whole passes."""
    import contextlib
    import copy

    from eaq.nn.hooks import ProgressiveReplay, StopForward, forward_until_stopped, hooks_on

    torch.manual_seed(0)
    batches = [torch.randn(5, 4), torch.randn(3, 4)]
    layers = ["blocks.0", "blocks.1", "blocks.2", "head"]

    def walk(net, replay):
        seen = []
        for name in layers:
            layer = net.get_submodule(name)

            def take(_m, args):
                seen.append(args[0].clone())
                raise StopForward

            with replay(name), hooks_on([(layer, take)], pre=True), torch.no_grad():
                for x in batches:
                    forward_until_stopped(net, x)
                layer.weight.mul_(0.5)  # the method changes the layer it measured
        return seen

    net = _Chain().eval()
    whole_net = copy.deepcopy(net)
    progressive = ProgressiveReplay(net, ["blocks.0", "blocks.1", "blocks.2"], batches)
    assert progressive.finished_before("blocks.2") == ["blocks.0", "blocks.1"]
    net.reset()
    got = walk(net, progressive.before)
    whole = walk(whole_net, lambda name: contextlib.nullcontext())
    assert len(got) == len(whole) == 8
    assert all(torch.equal(g, w) for g, w in zip(got, whole, strict=True))
    # blocks 0 and 1 computed once each after they finished (to be recorded), block 2 once
    assert net.counts() == [2, 2, 2] and whole_net.counts() == [6, 4, 2]
    assert set(progressive.outputs) == {"blocks.0", "blocks.1", "blocks.2"}
    assert net.blocks[0](batches[0]).shape == (5, 4) and net.counts()[0] == 3  # restored
    with pytest.raises(EaqError, match="did not run"):
        progressive.finished_before("nothing")


def test_progressive_replay_never_replays_a_block_that_runs_twice():
    from eaq.nn.hooks import ProgressiveReplay

    net = _Twice().eval()
    replay = ProgressiveReplay(net, ["block"], [torch.randn(2, 4)])
    assert replay.never == {"block"}
    with replay.before("head"):
        net(torch.randn(2, 4))
    assert replay.outputs == {}
