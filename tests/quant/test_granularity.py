import pytest
import torch

from eaq.errors import EaqError
from eaq.quant.granularity import (
    PerChannel,
    PerGroup,
    PerTensor,
    block_size,
    block_view,
    blocks_2d,
    format_granularity,
    parse_granularity,
    reduce_blocks,
    scale_shape,
)

TABLE = [
    # shape, granularity, block_size, scale_shape
    ((64, 128), PerTensor(), (64, 128), ()),
    ((8, 16, 4, 4), PerTensor(), (8, 16, 4, 4), ()),
    ((64, 128), PerChannel(0), (1, 128), (64, 1)),
    ((64, 128), PerChannel(1), (64, 1), (1, 128)),
    ((64, 128), PerChannel(-1), (64, 1), (1, 128)),
    ((8, 16, 4, 4), PerChannel(1), (8, 1, 4, 4), (1, 16, 1, 1)),
    ((8, 16, 4, 4), PerChannel(-3), (8, 1, 4, 4), (1, 16, 1, 1)),
    ((16, 32, 3, 3), PerChannel(), (1, 32, 3, 3), (16, 1, 1, 1)),
    ((64, 128), PerGroup(32), (1, 32), (64, 4)),
    ((64, 128), PerGroup(128), (1, 128), (64, 1)),
    ((64, 128), PerGroup(16, -1), (1, 16), (64, 8)),
    ((16, 32, 3, 3), PerGroup(8), (1, 8, 3, 3), (16, 4, 1, 1)),
    ((4, 6, 10), PerGroup(5, 2), (1, 6, 5), (4, 1, 2)),
]


@pytest.mark.parametrize(("shape", "g", "block", "sshape"), TABLE)
def test_block_size_and_scale_shape_table(shape, g, block, sshape):
    assert block_size(shape, g) == block
    assert scale_shape(shape, g) == sshape


def test_group_size_that_does_not_divide_names_both_numbers():
    with pytest.raises(EaqError, match=r"group size 48 .*128"):
        block_size((64, 128), PerGroup(48))


@pytest.mark.parametrize(
    ("shape", "g"),
    [((64, 128), PerChannel(2)), ((64, 128), PerChannel(-3)), ((4, 8), PerGroup(4, 5))],
)
def test_axis_out_of_range(shape, g):
    with pytest.raises(EaqError, match="out of range"):
        block_size(shape, g)


def test_group_along_dim0_rejected():
    with pytest.raises(EaqError, match="dim 0"):
        block_size((64, 128), PerGroup(32, axis=0))


@pytest.mark.parametrize("size", [0, -4, 2.5])
def test_bad_group_size(size):
    with pytest.raises(EaqError, match=str(size)):
        PerGroup(size)


@pytest.mark.parametrize(
    "g", [PerTensor(), PerChannel(), PerChannel(1), PerChannel(-1), PerGroup(32), PerGroup(8, 2)]
)
def test_format_parse_round_trip(g):
    assert parse_granularity(format_granularity(g)) == g


@pytest.mark.parametrize(
    ("text", "g"),
    [
        ("tensor", PerTensor()),
        ("channel", PerChannel(0)),
        ("channel:1", PerChannel(1)),
        ("channel:-1", PerChannel(-1)),
        ("group:32", PerGroup(32, 1)),
        ("group:32:2", PerGroup(32, 2)),
    ],
)
def test_parse(text, g):
    assert parse_granularity(text) == g


@pytest.mark.parametrize(
    "text", ["", "tensors", "channel:x", "group", "group:", "group:0", "group:a:1", "tensor:1", "c"]
)
def test_bad_strings(text):
    with pytest.raises(EaqError, match="group:N") as info:
        parse_granularity(text)
    assert repr(text) in str(info.value)


def _naive_amax(x, g):
    """Per-block max by explicit loops over the scale grid."""
    block = block_size(x.shape, g)
    sshape = scale_shape(x.shape, g)
    grid = tuple(d // b for d, b in zip(x.shape, block, strict=True))
    out = torch.empty(grid)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in grid]).reshape(-1, len(grid)):
        sl = tuple(slice(int(i) * b, (int(i) + 1) * b) for i, b in zip(idx, block, strict=True))
        out[tuple(int(i) for i in idx)] = x[sl].max()
    return out.reshape(sshape)


@pytest.mark.parametrize(
    ("shape", "g"),
    [
        ((6, 8), PerTensor()),
        ((6, 8), PerChannel(0)),
        ((6, 8), PerChannel(-1)),
        ((3, 4, 2, 2), PerChannel(1)),
        ((6, 8), PerGroup(4)),
        ((4, 6, 3, 3), PerGroup(2)),
        ((2, 3, 6), PerGroup(3, 2)),
    ],
)
def test_block_reductions_match_loops(shape, g):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = _naive_amax(x, g)
    assert torch.equal(reduce_blocks(x, g, "amax"), expected)
    view, dims = block_view(x, g)
    assert torch.equal(view.amax(dim=dims, keepdim=True).reshape(expected.shape), expected)
    rows = blocks_2d(x, g)
    assert rows.shape[1] == torch.Size(block_size(shape, g)).numel()
    assert torch.equal(rows.amax(dim=1).reshape(expected.shape), expected)
    assert torch.equal(-reduce_blocks(-x, g, "amin"), expected)
