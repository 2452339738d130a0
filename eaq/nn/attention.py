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
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from eaq.errors import EaqError
from eaq.nn.layers import QuantMatMul

MATMUL_NAMES = ("qk_matmul", "av_matmul")
PROJECTION_NAMES = ("qkv", "in_proj")
"""The input projection an attention module's matmuls follow (timm, torch)."""


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


class QuantMultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` (torchvision's ViT) with explicit, quantizable parts.

    Self-attention only (query, key and value the same tensor), without masks, as a ViT uses
    it. The packed input projection becomes the Linear ``in_proj`` (sharing the parameters:
    its state-dict keys are ``in_proj.weight``/``in_proj.bias`` instead of ``in_proj_weight``/
    ``in_proj_bias``), the products ``qk_matmul`` and ``av_matmul`` are
    :class:`~eaq.nn.layers.QuantMatMul` modules, and ``out_proj`` is called as a module.
    Numerically it is the float module's computation.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise EaqError(
                "MultiheadAttention with separate key/value sizes, bias_k/bias_v or "
                "add_zero_attn is not supported; eaq quantizes the packed self-attention of ViTs"
            )
        e = mha.embed_dim
        self.embed_dim, self.num_heads = e, mha.num_heads
        self.head_dim = e // mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        self.in_proj = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None, device="meta")
        self.in_proj.weight = mha.in_proj_weight
        self.in_proj.bias = mha.in_proj_bias
        self.qk_matmul = QuantMatMul()
        self.av_matmul = QuantMatMul(a_role="softmax")
        self.out_proj = mha.out_proj
        self.train(mha.training)

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention) -> QuantMultiheadAttention:
        return cls(mha)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not (query is key is value) or key_padding_mask is not None or attn_mask is not None:
            raise EaqError(
                "eaq's quantized MultiheadAttention takes self-attention without masks "
                "(query, key and value the same tensor)"
            )
        x = query if self.batch_first else query.transpose(0, 1)
        B, N, E = x.shape
        qkv = self.in_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.head_dim**-0.5
        attn = self.qk_matmul(q, k.transpose(-2, -1))
        if is_causal:
            mask = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
            attn = attn.masked_fill(mask, float("-inf"))
        attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, self.dropout, self.training)
        out = self.av_matmul(attn, v).transpose(1, 2).reshape(B, N, E)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(1) if average_attn_weights else attn
