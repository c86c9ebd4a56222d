"""SpiLiFormer's lateral-inhibition attention (Zheng et al., ICCV 2025; docs/models.md, "SpiLiFormer").

FF-LiDiff (shallow stages), per head h of d = C / heads channels:

    Q, K   = LIF(BN(X W_q)), LIF(BN(X W_k))                     binary, [T, B, N, C], no bias
    s      = q+ - q-      (q+/q-: sum of Q over head h's d/2-channel group in the first / second half of C)
    m      = LIF_{0.5}(s)                                      binary token mask, [T, B, N, heads]
    out    = LIF(BN((m * K_h) W_o + b_o))                      no V, no scale

With ``q_split=False``, s is the sum of Q over head h's d channels (QKFormer's token attention; the DVS code).

FB-LiDiff (last stage), SSA-like with feedback F entering the value path through the same weights:

    V      = LIF(BN(X W_v + F W_v))
    out    = LIF(BN(LIF_{0.5}(Q (K^T V) * 0.125) W_o + b_o))
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import LinearBN, LinearBNSpike
from ..neurons import LIF
from .base import attention_product, merge_heads, output_projection, split_heads


class FFLiDiff(nn.Module):
    """Feed-forward lateral-differential token attention ``[T, B, N, dim] -> [T, B, N, dim]`` (docs/models.md).

    Args:
        dim: channels C; heads: number of heads (C divisible by it; with ``q_split`` the head size must be even).
        q_split: token score = difference of the two half-channel sums of Q (SpiLiFormer); False gives the sum
            over the head's channels (QKFormer token attention, SpiLiFormer's DVS / N-Caltech101 code).
        qkv_bias: bias on the Q/K projections (False in the official code).
        attn_v_th: threshold of the token-mask neuron.
        proj_bias: bias on the output projection (True in the official code; spikingjelly's QKFormer has none).
        proj_neuron: end with the output projection's LIF; False leaves it out, so the output is the projection's
            batch-norm output (the membrane-shortcut block asks for that, :func:`~.base.output_projection`).

    Parameters: ``3 C^2 + 7 C`` (no bias on Q/K).
    """

    def __init__(
        self, dim: int, heads: int = 8, q_split: bool = True, qkv_bias: bool = False, attn_v_th: float = 0.5,
        proj_bias: bool = True, proj_neuron: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        if q_split and (dim // heads) % 2:
            raise ValueError(f"FF-LiDiff with q_split needs an even head size, got dim {dim} / heads {heads}")
        self.heads, self.q_split = heads, q_split
        self.q = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.k = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.attn_neuron = LIF(v_th=attn_v_th)
        self.proj = output_projection(dim, proj_bias, proj_neuron)

    def token_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Per-head token scores from Q spikes: ``[T, B, N, C] -> [T, B, N, heads]``."""
        T, B, N, C = q.shape
        if not self.q_split:
            return q.view(T, B, N, self.heads, C // self.heads).sum(-1)
        pos, neg = q.view(T, B, N, 2, self.heads, C // (2 * self.heads)).sum(-1).unbind(3)
        return pos - neg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x), self.k(x)
        mask = self.attn_neuron(self.token_scores(q))  # [T, B, N, heads]
        T, B, N, C = k.shape
        out = (k.view(T, B, N, self.heads, C // self.heads) * mask.unsqueeze(-1)).view(T, B, N, C)
        return self.proj(out)


class FBLiDiff(nn.Module):
    """Feedback lateral-differential attention ``[T, B, N, dim] -> [T, B, N, dim]`` (docs/models.md).

    ``forward(x, feedback=F)`` adds ``F W_v`` (``F: [T, B, N, dim]``, same weights as ``X W_v``) before the
    value batch norm; without ``feedback`` it is SSA with binary Q, K, V.

    Args:
        dim: channels C; heads: number of heads; scale: multiplier of the product (0.125).
        doubled_kv: the CIFAR10-DVS code's variant: K and V are C -> 2C, split into 2*heads heads, and head i
            uses ``K_{2i}^T V_{2i} - K_{2i+1}^T V_{2i+1}`` in place of ``K_i^T V_i``. Off by default.
        qkv_bias: bias on the Q/K/V projections (False in the official code; the feedback never gets a bias).
        attn_v_th: threshold of the neuron after the product; order: see :func:`attention_product`.
        fold_proj_lif: official quirk Q1 (docs/models.md, "Official quirks"): the projection's LIF integrates
            over the folded T*B axis.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        scale: float = 0.125,
        doubled_kv: bool = False,
        qkv_bias: bool = False,
        attn_v_th: float = 0.5,
        order: str = "auto",
        fold_proj_lif: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads, self.scale, self.doubled_kv, self.order = heads, scale, doubled_kv, order
        self.fold_proj_lif = fold_proj_lif
        kv_dim = 2 * dim if doubled_kv else dim
        self.q = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.k = LinearBNSpike(dim, kv_dim, bias=qkv_bias)
        self.v = LinearBNSpike(dim, kv_dim, bias=qkv_bias)
        self.attn_neuron = LIF(v_th=attn_v_th)
        self.proj = LinearBN(dim, dim, bias=True)
        self.proj_neuron = LIF()

    def value(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        """V spikes ``[T, B, N, kv_dim]``: ``LIF(BN(X W_v + b_v + F W_v))``, the feedback sharing the value weights
        without the bias (equal to ``W_v (X + F) + b_v``). ``F W_v`` stays a product of its own, so the energy
        counter counts the feedback's spikes apart from the input's (``stage3.0.attn.linear1``)."""
        if feedback is None:
            return self.v(x)
        if feedback.shape != x.shape:
            raise ValueError(f"feedback must have the input's shape {tuple(x.shape)}, got {tuple(feedback.shape)}")
        return self.v(x, added=self.v.project(feedback, bias=False))

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        q = split_heads(self.q(x), self.heads)  # [T, B, h, N, d]
        if self.doubled_kv:
            k = split_heads(self.k(x), 2 * self.heads)  # [T, B, 2h, N, d]
            v = split_heads(self.value(x, feedback), 2 * self.heads)
            kv = k.transpose(-2, -1) @ v  # [T, B, 2h, d, d]
            a = q @ (kv[:, :, 0::2] - kv[:, :, 1::2])
        else:
            k = split_heads(self.k(x), self.heads)
            v = split_heads(self.value(x, feedback), self.heads)
            a = attention_product(q, k, v, self.order)
        a = self.attn_neuron(merge_heads(a * self.scale))
        y = self.proj(a)
        if self.fold_proj_lif:  # quirk Q1: one LIF sequence over the T*B axis in (t, b) order
            T, B = y.shape[:2]
            return self.proj_neuron(y.reshape(T * B, 1, *y.shape[2:])).view_as(y)
        return self.proj_neuron(y)
