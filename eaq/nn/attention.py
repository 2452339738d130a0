"""Attention with explicit, quantizable matmuls for timm Vision Transformers.

timm's ``Attention`` computes ``softmax(q k^T) v`` either fused (scaled_dot_product_attention)
or, with ``fused_attn = False``, step by step. :class:`QuantAttention` is that non-fused path
as a module of its own, with the two activation-by-activation products as
:class:`~eaq.nn.layers.QuantMatMul` submodules ``qk_matmul`` (Q*K^T) and ``av_matmul``
(softmax*V), so a plan can quantize them like any other layer. ``av_matmul``'s first input is
marked post-softmax (``a_role="softmax"``), so a config's ``softmax_quantizer`` applies to it.
It takes over the float module's submodules (qkv, norms, proj), so its state_dict keys are
unchanged.
"""

from __future__ import annotations

import torch
from timm.layers import Attention as TimmAttention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from eaq.nn.layers import QuantMatMul

MATMUL_NAMES = ("qk_matmul", "av_matmul")


class QuantAttention(nn.Module):
    """timm ``Attention``, non-fused, with ``qk_matmul`` and ``av_matmul`` modules."""

    def __init__(self, attn: TimmAttention) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.attn_dim = attn.attn_dim
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = attn.norm
        self.gate = attn.gate
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.qk_matmul = QuantMatMul()
        self.av_matmul = QuantMatMul(a_role="softmax")

    @classmethod
    def from_float(cls, attn: TimmAttention) -> QuantAttention:
        return cls(attn)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = self.qk_matmul(q, k.transpose(-2, -1))
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = self.av_matmul(attn, v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
