"""Temporary forward hooks, and replayed block outputs: how eaq looks inside a model during a
pass.

Calibration-time statistics (bias correction, SmoothQuant, GPTQ, sensitivity, AdaRound) all
register hooks for one or more passes over calibration data and must remove them afterwards,
also when a pass fails; :func:`hooks_on` does that. A hook that has what it needs can raise
:class:`StopForward` to cut the pass short; :func:`forward_until_stopped` runs such a pass.
:class:`PrefixReplay` replaces whole blocks' forwards for a while (restored afterwards) by
their recorded float outputs; :class:`ProgressiveReplay` does the same for a model that a
method changes layer by layer, recording each block once the method is past it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from eaq.errors import EaqError


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (see :func:`forward_until_stopped`)."""


@contextlib.contextmanager
def hooks_on(pairs: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False) -> Iterator[None]:
    """Register each ``(module, hook)`` for the block (forward-pre hooks with ``pre``)."""
    handles = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_until_stopped(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model(x)``, ending quietly where a hook raises :class:`StopForward`."""
    try:
        model(x)
    except StopForward:
        pass


@torch.no_grad()
def layer_calls(
    model: nn.Module, name: str, images: Iterable[torch.Tensor], *, with_output: bool = False
) -> list[tuple[tuple, torch.Tensor | None]]:
    """Run ``model`` on each batch of ``images`` and keep what submodule ``name`` received.

    One ``(args, output)`` pair per batch: ``args`` the layer's positional inputs (copies), and
    ``output`` its output with ``with_output`` (else ``None``). Each pass stops at the layer.
    A layer called with keyword arguments, or never reached, is an error.
    """
    layer = model.get_submodule(name)
    calls: list[tuple[tuple, torch.Tensor | None]] = []

    def pre(_m, args, kwargs):
        if kwargs:
            raise EaqError(f"layer {name} is called with keyword arguments; cannot replay it")
        calls.append((tuple(a.clone() if torch.is_tensor(a) else a for a in args), None))
        if not with_output:
            raise StopForward

    def post(_m, _args, out):
        calls[-1] = (calls[-1][0], out.clone())
        raise StopForward

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True)]
    if with_output:
        handles.append(layer.register_forward_hook(post))
    n_batches = 0
    try:
        for x in images:
            n_batches += 1
            forward_until_stopped(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if len(calls) != n_batches:
        raise EaqError(f"the forward pass never reached layer {name}")
    return calls


class PrefixReplay:
    """Skip the float prefix of a pass by replaying the recorded outputs of whole blocks.

    :meth:`record` runs a float model once over a list of input batches and keeps, for each
    named block, its output on each batch, and the order in which blocks end and modules start.
    Then, inside ``with replay.skipping(copy, name):``, every recorded block of ``copy`` that
    ended before module ``name`` first started returns its recorded output (a copy) instead of
    computing it. Passes of ``copy`` over the same batches, in the same order, then cost only
    the modules from ``name`` on (and the cheap operations between blocks). The result is exact
    when ``copy`` computes what the recorded model did before ``name``: a copy of it in which
    only ``name`` and what follows may differ, as in a sensitivity with one layer quantized.

    A block that returns something other than a tensor, or runs more than once a pass, is not
    replayed.
    """

    def __init__(self, outputs: dict, ended: dict, started: dict, model_outputs: list) -> None:
        self.block_outputs: dict[str, list[torch.Tensor]] = outputs
        self.ended: dict[str, int] = ended
        self.started: dict[str, int] = started
        self.model_outputs: list = model_outputs  # the recording pass's model outputs

    @classmethod
    @torch.no_grad()
    def record(cls, model: nn.Module, blocks: Iterable[str], batches: list) -> PrefixReplay:
        """Run ``model`` on each tensor of ``batches`` once; record what replaying needs."""
        blocks = list(blocks)
        started, ended, calls, outputs, model_outputs = _traced_passes(model, blocks, batches)
        n = len(batches)
        kept = {
            b: outs
            for b, outs in outputs.items()
            if calls[b] == n and all(o is not None for o in outs)
        }
        return cls(kept, {b: ended[b] for b in kept}, started, model_outputs)

    def blocks_before(self, name: str) -> list[str]:
        """The recorded blocks that end before module ``name`` first starts."""
        return _ended_before(self.started, self.ended, name)

    @contextlib.contextmanager
    def skipping(self, model: nn.Module, name: str) -> Iterator[None]:
        """Within the block, :meth:`blocks_before` ``name`` in ``model`` replay their outputs."""
        patched: list[nn.Module] = []
        try:
            for b in self.blocks_before(name):
                module = model.get_submodule(b)
                module.forward = _replayer(b, self.block_outputs[b])
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward


class ProgressiveReplay:
    """Replay the blocks that a layer-by-layer method is done with, recording each as it ends.

    Sequential GPTQ and bias correction change a model one layer at a time, in the order the
    layers run, and measure each layer in passes over the calibration batches that stop at it.
    A block that ends before the current layer starts holds only finished layers, so its
    output no longer changes. Inside ``with replay.before(name):``, the first pass over the
    batches records the output of each such block not yet recorded, and the passes of later
    layers replay it instead of computing it. A pass then computes the newest finished block
    once and the current block up to the layer, not the whole prefix, and every value is the one
    the whole prefix computes: the recorded outputs are the model's own, on the same batches in
    the same order.

    The order in which modules start and blocks end comes from one pass of ``model`` on the first
    image of ``batches``. The recorded outputs stay in memory until the replay is dropped. A
    block that returns something other than a tensor, or runs more than once a pass, is never
    replayed, and the layers after it are measured on whole passes.
    """

    def __init__(self, model: nn.Module, blocks: Iterable[str], batches: list) -> None:
        self.model = model
        self.n_batches = len(batches)
        self.outputs: dict[str, list[torch.Tensor]] = {}
        blocks = list(blocks)
        started, ended, calls, outputs, _ = _traced_passes(
            model, blocks, [batches[0][:1]] if batches else [], keep=False
        )
        # blocks that cannot be replayed: not run once, or not returning a tensor
        self.never = {b for b in blocks if calls[b] != 1 or None in outputs[b]}
        self.started = started
        self.ended = {b: ended[b] for b in blocks if b in ended}

    def finished_before(self, name: str) -> list[str]:
        """The blocks that end before module ``name`` first starts."""
        return _ended_before(self.started, self.ended, name)

    @contextlib.contextmanager
    def before(self, name: str) -> Iterator[None]:
        """Within the block, passes of the model over the batches, in order, start near ``name``."""
        finished = [b for b in self.finished_before(name) if b not in self.never]
        recording = {b: [] for b in finished if b not in self.outputs}
        patched: list[nn.Module] = []

        def keep(block):
            def hook(_m, _args, out):
                recording[block].append(out.clone())

            return hook

        try:
            for b in finished:
                if b in self.outputs:
                    module = self.model.get_submodule(b)
                    module.forward = _replayer(b, self.outputs[b])
                    patched.append(module)
            with hooks_on((self.model.get_submodule(b), keep(b)) for b in recording):
                yield
        finally:
            for module in patched:
                del module.forward
        for b, outs in recording.items():
            if len(outs) == self.n_batches:
                self.outputs[b] = outs


@torch.no_grad()
def _traced_passes(
    model: nn.Module, blocks: list[str], inputs: list, keep: bool = True
) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, list], list]:
    """Run ``model`` on each of ``inputs``, watching it.

    Returns the clock at which each module first started and each of ``blocks`` first ended,
    each block's number of calls, its outputs (copies with ``keep``; ``None`` for an output that
    is not a tensor) and the model's outputs.
    """
    outputs: dict[str, list] = {b: [] for b in blocks}
    calls = dict.fromkeys(blocks, 0)
    started: dict[str, int] = {}
    ended: dict[str, int] = {}
    clock = [0]

    def pre(name):
        def hook(_m, _args):
            if name not in started:
                started[name] = clock[0]
                clock[0] += 1

        return hook

    def post(name):
        def hook(_m, _args, out):
            calls[name] += 1
            if not torch.is_tensor(out):
                outputs[name].append(None)
            elif keep:
                outputs[name].append(out.clone())
            if name not in ended:
                ended[name] = clock[0]
                clock[0] += 1

        return hook

    pairs = [(m, pre(n)) for n, m in model.named_modules() if n]
    posts = [(model.get_submodule(b), post(b)) for b in blocks]
    with hooks_on(pairs, pre=True), hooks_on(posts):
        model_outputs = [model(x) for x in inputs]
    return started, ended, calls, outputs, model_outputs


def _ended_before(started: dict[str, int], ended: dict[str, int], name: str) -> list[str]:
    """The blocks of ``ended`` whose recorded pass ended them before module ``name`` started."""
    if name not in started:
        raise EaqError(f"module {name} did not run in the recorded pass")
    return [b for b, end in ended.items() if end < started[name]]


def _replayer(block: str, outputs: list[torch.Tensor]) -> Callable:
    """A forward for ``block`` that returns its recorded outputs, one per call, in turn."""
    calls = [0]

    def forward(x, *args, **kwargs):
        out = outputs[calls[0] % len(outputs)]
        calls[0] += 1
        if x.shape[0] != out.shape[0]:
            raise EaqError(
                f"block {block} replays a batch of {out.shape[0]} for an input of "
                f"{x.shape[0]}: pass the recorded batches in their order"
            )
        return out.clone()

    return forward
