"""Correlated inputs for reconstruction tests.

With i.i.d. inputs the layer-output error's Hessian is (close to) diagonal and round-to-nearest
is already optimal, so learned rounding cannot win; real activations are correlated across
channels and space, and these inputs are too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def correlated(n: int, c: int, hw: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    """``[n, c, hw, hw]`` inputs correlated across space (3x3 box blur) and channels (mixing)."""
    g = torch.Generator().manual_seed(seed)
    z = F.avg_pool2d(torch.randn(n, c, hw + 2, hw + 2, generator=g), 3, stride=1)
    mix = torch.randn(c, c, generator=g) / c**0.5 + torch.eye(c)
    x = torch.einsum("dc,nchw->ndhw", mix, z) + 0.5 * torch.randn(n, 1, 1, 1, generator=g)
    return x.relu() if positive else x
