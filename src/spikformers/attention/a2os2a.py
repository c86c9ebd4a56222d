"""A2OS2A: accurate addition-only spiking self-attention (Guo et al., CVPR 2025).

    Q = LIF(BN(X W_q))            binary   {0, 1}
    K = ReLU(BN(X W_k))           real     [0, inf)
    V = Ternary(BN(X W_v))        ternary  {-1, 0, +1}
    A = SN(Q (K^T V))             per head, no softmax, no scale; SN = LIF with v_th = 0.5
    out = LIF(BN(A W_o + b_o))

Every product is real x ternary (``K^T V``: additions and subtractions) or binary x real (``Q M``: additions).
Confirmed from the paper's abstract: binary, ReLU and ternary neurons inside attention, no softmax, no scaling,
addition-only products. Our documented choices (two independent reimplementations agree; not confirmed from
the paper text): which neuron goes where, SN = LIF with ``v_th = 0.5`` (the threshold SSA uses after its
product), and the ternary neuron's form (option ``ternary_form``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import LinearBNSpike
from ..neurons import LIF
from .base import attention_product, merge_heads, output_projection, split_heads


class A2OS2A(nn.Module):
    """Addition-only spiking self-attention ``[T, B, N, dim] -> [T, B, N, dim]``.

    Args:
        dim: channels D; heads: number of heads (D must be divisible by it).
        qkv_bias: bias on the Q/K/V projections.
        attn_v_th: threshold of the LIF neuron SN after the product (0.5, our choice).
        ternary_form: form of V's ternary neuron, ``"guo"`` (default) or ``"lif"`` (see :class:`TernaryNeuron`).
        order: product order, ``"kv_first"`` (the equation's ``Q (K^T V)``) or as :func:`attention_product`.
        proj_neuron: end with the output projection's LIF; False leaves it out, so the output is the projection's
            batch-norm output (the membrane-shortcut block asks for that, :func:`~.base.output_projection`).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        qkv_bias: bool = False,
        attn_v_th: float = 0.5,
        ternary_form: str = "guo",
        order: str = "kv_first",
        proj_neuron: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads, self.order = heads, order
        self.q = LinearBNSpike(dim, dim, bias=qkv_bias, neuron="lif")
        self.k = LinearBNSpike(dim, dim, bias=qkv_bias, neuron="relu")
        self.v = LinearBNSpike(dim, dim, bias=qkv_bias, neuron="ternary", form=ternary_form)
        self.attn_neuron = LIF(v_th=attn_v_th)
        self.proj = output_projection(dim, True, proj_neuron)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Binary Q, real non-negative K, ternary V, split into heads, each ``[T, B, heads, N, d]``."""
        return tuple(split_heads(p(x), self.heads) for p in (self.q, self.k, self.v))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        a = attention_product(q, k, v, self.order)
        return self.proj(self.attn_neuron(merge_heads(a)))
