"""SDSA: spike-driven self-attention (Spike-driven Transformer, Yao et al., NeurIPS 2023; docs/models.md).

    Q, K, V = LIF(BN(X W_q)), LIF(BN(X W_k)), LIF(BN(X W_v))    binary, [T, B, N, D]
    kv      = LIF_{v_th=0.5}(sum over tokens of K * V)           [T, B, 1, D], a binary channel mask
    out     = LIF(BN((Q * kv) W_o + b_o))

Only masks (elementwise products of spikes) and additions; no matrix product. Because every step is
channel-wise, heads do not change the result (``heads`` is kept for the common interface). In the
membrane-shortcut block (:class:`spikformers.models.blocks.MembraneBlock`) the final LIF is dropped, as in SDT.
Not implemented: SDT's ``dvs_mode`` max-pools over the spatial grid (they need the 2-d token layout).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import LinearBNSpike
from ..neurons import LIF
from .base import output_projection


class SDSA(nn.Module):
    """Spike-driven self-attention ``[T, B, N, dim] -> [T, B, N, dim]`` with masks and additions only.

    Args:
        dim: channels D; heads: number of heads (no effect on the result; D must be divisible by it).
        qkv_bias: bias on the Q/K/V projections (SDT's convs have none; our CIFAR variant's do).
        attn_v_th: threshold of the channel-mask neuron (SDT's ``talking_heads_lif``, 0.5).
        proj_neuron: end with the output projection's LIF; False leaves it out, so the output is the projection's
            batch-norm output (the membrane-shortcut block asks for that, :func:`~.base.output_projection`).
    """

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = False, attn_v_th: float = 0.5,
                 proj_neuron: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.q = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.k = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.v = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.attn_neuron = LIF(v_th=attn_v_th)
        self.proj = output_projection(dim, True, proj_neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        kv = self.attn_neuron((k * v).sum(dim=2, keepdim=True))  # [T, B, 1, D]
        return self.proj(q * kv)
