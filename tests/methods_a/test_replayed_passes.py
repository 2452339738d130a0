"""Sequential GPTQ and bias correction replay the blocks they are done with
(:class:`~eaq.nn.hooks.ProgressiveReplay`): the same weights and biases as whole passes, from
fewer block computations."""

import contextlib

import pytest
import torch
from torch import nn

from eaq.methods import quantize_model_
from eaq.nn.hooks import ProgressiveReplay
from eaq.plan import Plan
from tests.small_models import resnet20, vit


def _vit_6_blocks() -> nn.Module:
    return vit(depth=6)


def _calib(n_batches=2):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 8, 8, generator=g), torch.zeros(4, dtype=torch.long))
        for _ in range(n_batches)
    ]


def _block_type(model: nn.Module) -> type[nn.Module]:
    from eaq.models.blocks import BLOCK_TYPES

    return next(type(m) for m in model.modules() if isinstance(m, BLOCK_TYPES))


@pytest.mark.parametrize("build", [resnet20, _vit_6_blocks])
@pytest.mark.parametrize(
    "method, options",
    [
        ("gptq", {"target": "float", "bias_correction": True}),
        ("biascorr", {}),
    ],
)
def test_replayed_passes_give_the_same_model_from_fewer_block_computations(
    build, method, options, monkeypatch
):
    calib = _calib()
    block = _block_type(build())
    forward = block.forward
    computed = []
    monkeypatch.setattr(
        block, "forward", lambda self, *a, **k: computed.append(1) or forward(self, *a, **k)
    )
    models, counts = [], []
    for replaying in (True, False):
        if not replaying:
            monkeypatch.setattr(ProgressiveReplay, "before", lambda *_: contextlib.nullcontext())
        model = build()
        computed.clear()
        quantize_model_(model, Plan.uniform(4, 8), calib, method=method, options=options)
        models.append(model.state_dict())
        counts.append(len(computed))
    replayed, whole = models
    assert replayed.keys() == whole.keys()
    assert all(torch.equal(replayed[k], whole[k]) for k in replayed)
    assert 0 < counts[0] < 0.6 * counts[1], counts
