"""One description of quantization granularity.

Every granularity reduces to a *block size* (torchao style): the extent of one quantization block
along each dimension of the tensor. One scale and zero point are shared by all elements of a block.

======================  =====================  ========================  ==================
granularity             tensor shape           block_size                scale_shape
======================  =====================  ========================  ==================
``PerTensor()``         ``[64, 128]``          ``(64, 128)``             ``()``
``PerChannel(0)``       ``[64, 128]``          ``(1, 128)``              ``(64, 1)``
``PerChannel(1)``       ``[8, 16, 4, 4]``      ``(8, 1, 4, 4)``          ``(1, 16, 1, 1)``
``PerChannel(-1)``      ``[64, 128]``          ``(64, 1)``               ``(1, 128)``
``PerGroup(32)``        ``[64, 128]``          ``(1, 32)``               ``(64, 4)``
``PerGroup(8)``         ``[16, 32, 3, 3]``     ``(1, 8, 3, 3)``          ``(16, 4, 1, 1)``
======================  =====================  ========================  ==================

Scale shapes are "keepdim" shapes so a scale broadcasts against the tensor it describes; per-tensor
scales are 0-d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eaq.errors import EaqError

__all__ = [
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "block_size",
    "block_view",
    "blocks_2d",
    "format_granularity",
    "parse_granularity",
    "scale_shape",
]

GRANULARITY_FORMS = ("tensor", "channel", "channel:AXIS", "group:N", "group:N:AXIS")


def _check_int(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EaqError(f"{what} must be an integer, got {value!r}")


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (negative axes count from the end).

    Attributes:
        axis: The channel dimension (0 for weights ``[out, ...]``, 1 for NCHW activations).
    """

    axis: int = 0

    def __post_init__(self) -> None:
        _check_int(self.axis, "per-channel axis")


@dataclass(frozen=True)
class PerGroup:
    """Groups of ``size`` consecutive elements along ``axis``, separately for each output channel.

    A Linear weight ``[out, in]`` with ``PerGroup(32)`` has scale shape ``[out, in // 32]``;
    a Conv weight ``[O, I, kh, kw]`` has blocks of ``(1, size, kh, kw)``.

    Attributes:
        size: Number of consecutive elements in one group (must divide the tensor's extent).
        axis: The dimension along which groups are formed (not 0).
    """

    size: int
    axis: int = 1

    def __post_init__(self) -> None:
        _check_int(self.size, "group size")
        _check_int(self.axis, "group axis")
        if self.size < 1:
            raise EaqError(f"group size must be a positive integer, got {self.size}")


Granularity = PerTensor | PerChannel | PerGroup


def _normalise_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise EaqError(
            f"{what} axis {axis} is out of range for a tensor with {ndim} dimensions "
            f"(valid: {-ndim}..{ndim - 1})"
        )
    return axis % ndim


def block_size(shape: Sequence[int], g: Granularity) -> tuple[int, ...]:
    """Return the extent of one quantization block along each dimension of ``shape``.

    Args:
        shape: Shape of the tensor to quantize.
        g: Granularity.

    Returns:
        ``shape`` for :class:`PerTensor`; 1 at ``axis`` and full elsewhere for
        :class:`PerChannel`; 1 at dim 0, ``size`` at ``axis`` and full elsewhere for
        :class:`PerGroup`.

    Raises:
        EaqError: If the axis is out of range or the group size does not divide the extent.

    Examples:
        >>> block_size((64, 128), PerGroup(32))
        (1, 32)
        >>> block_size((8, 16, 4, 4), PerChannel(1))
        (8, 1, 4, 4)
    """
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if isinstance(g, PerTensor):
        return shape
    if isinstance(g, PerChannel):
        axis = _normalise_axis(g.axis, ndim, "per-channel")
        return tuple(1 if i == axis else d for i, d in enumerate(shape))
    if isinstance(g, PerGroup):
        axis = _normalise_axis(g.axis, ndim, "group")
        if axis == 0:
            raise EaqError(
                f"group axis must not be dim 0 (the output channel) for shape {list(shape)}, "
                f"got axis {g.axis}"
            )
        if shape[axis] % g.size != 0:
            raise EaqError(
                f"group size {g.size} does not divide dimension {axis} of size {shape[axis]} "
                f"(shape {list(shape)})"
            )
        out = list(shape)
        out[0] = 1
        out[axis] = g.size
        return tuple(out)
    raise EaqError(f"unknown granularity {g!r}; valid: PerTensor, PerChannel, PerGroup")


def scale_shape(shape: Sequence[int], g: Granularity) -> tuple[int, ...]:
    """Return the keepdim shape of the scale for ``shape`` under ``g`` (``()`` per tensor).

    Examples:
        >>> scale_shape((64, 128), PerGroup(32))
        (64, 4)
        >>> scale_shape((8, 16, 4, 4), PerChannel(1))
        (1, 16, 1, 1)
        >>> scale_shape((8, 16), PerTensor())
        ()
    """
    blocks = block_size(shape, g)
    if isinstance(g, PerTensor):
        return ()
    return tuple(int(d) // b for d, b in zip(shape, blocks, strict=True))


def block_view(x: Tensor, g: Granularity) -> tuple[Tensor, tuple[int, ...]]:
    """View ``x`` so one reduction over the returned dims reduces each block.

    Dimension ``i`` of size ``d`` with block ``b`` becomes two dims ``(d // b, b)``; the
    block-internal dims are returned. ``x.amax(dim=dims, keepdim=True).reshape(scale_shape(...))``
    is then the per-block maximum.

    Args:
        x: Tensor to split into blocks.
        g: Granularity.

    Returns:
        The reshaped tensor (a view when ``x`` is contiguous) and the dims to reduce over.
    """
    blocks = block_size(x.shape, g)
    split: list[int] = []
    for d, b in zip(x.shape, blocks, strict=True):
        split += [d // b, b]
    return x.reshape(split), tuple(range(1, 2 * x.ndim, 2))


def blocks_2d(x: Tensor, g: Granularity) -> Tensor:
    """Return ``x`` rearranged as ``[n_blocks, block_numel]``; row order matches ``scale_shape``.

    ``result.reshape(-1)`` of a per-row statistic reshaped to ``scale_shape(x.shape, g)`` is the
    statistic per block.
    """
    view, dims = block_view(x, g)
    outer = tuple(range(0, 2 * x.ndim, 2))
    numel = math.prod(block_size(x.shape, g))
    return view.permute(*outer, *dims).reshape(-1, numel)


def reduce_blocks(x: Tensor, g: Granularity, op: str) -> Tensor:
    """Per-block ``amin``/``amax`` of ``x`` with shape ``scale_shape(x.shape, g)``."""
    view, dims = block_view(x, g)
    fn = {"amin": torch.amin, "amax": torch.amax}[op]
    return fn(view, dim=dims, keepdim=True).reshape(scale_shape(x.shape, g))


def expand_params(param: Tensor, shape: Sequence[int]) -> Tensor:
    """Broadcast a per-block parameter (``scale_shape`` layout) to elementwise ``shape``.

    Per-tensor and per-channel parameters already broadcast and are returned as they are;
    per-group ones are repeated along the grouped axis.

    Examples:
        >>> expand_params(torch.tensor([[1.0, 2.0]]), (1, 4)).tolist()
        [[1.0, 1.0, 2.0, 2.0]]
    """
    for dim, (n_param, n_x) in enumerate(zip(param.shape, shape, strict=False)):
        if 1 < n_param < n_x:
            param = param.repeat_interleave(n_x // n_param, dim=dim)
    return param


def parse_granularity(text: str) -> Granularity:
    """Parse ``"tensor"``, ``"channel"``, ``"channel:AXIS"``, ``"group:N"`` or ``"group:N:AXIS"``.

    Examples:
        >>> parse_granularity("group:32")
        PerGroup(size=32, axis=1)
        >>> parse_granularity("channel:-1")
        PerChannel(axis=-1)
    """
    parts = str(text).strip().split(":")
    try:
        if parts == ["tensor"]:
            return PerTensor()
        if parts[0] == "channel" and len(parts) in (1, 2):
            return PerChannel(int(parts[1])) if len(parts) == 2 else PerChannel()
        if parts[0] == "group" and len(parts) in (2, 3):
            size = int(parts[1])
            return PerGroup(size, int(parts[2])) if len(parts) == 3 else PerGroup(size)
    except (ValueError, EaqError) as err:
        detail = f" ({err})" if isinstance(err, EaqError) else ""
    else:
        detail = ""
    raise EaqError(
        f"bad granularity {text!r}{detail}; valid forms: {', '.join(GRANULARITY_FORMS)} "
        "(e.g. group:32, channel:1)"
    )


def format_granularity(g: Granularity) -> str:
    """Inverse of :func:`parse_granularity`.

    Examples:
        >>> format_granularity(PerGroup(32, axis=2))
        'group:32:2'
    """
    if isinstance(g, PerTensor):
        return "tensor"
    if isinstance(g, PerChannel):
        return "channel" if g.axis == 0 else f"channel:{g.axis}"
    if isinstance(g, PerGroup):
        return f"group:{g.size}" if g.axis == 1 else f"group:{g.size}:{g.axis}"
    raise EaqError(f"unknown granularity {g!r}; valid: PerTensor, PerChannel, PerGroup")
