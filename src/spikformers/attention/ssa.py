"""SSA: Spikformer's spiking self-attention (Zhou et al., ICLR 2023).

    Q, K, V = LIF(BN(X W_q)), LIF(BN(X W_k)), LIF(BN(X W_v))        all binary, [T, B, N, D]
    A       = LIF_{v_th=0.5}(Q K^T V * scale)                         per head, no softmax
    out     = LIF(BN(A W_o + b_o))

scale = 0.125 (ImageNet, CIFAR), 0.25 (the DVS code).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import LinearBNSpike
from ..neurons import LIF
from .base import attention_product, merge_heads, output_projection, split_heads


class SSA(nn.Module):
    """Spiking self-attention ``[T, B, N, dim] -> [T, B, N, dim]``.

    Args:
        dim: channels D; heads: number of heads (D must be divisible by it).
        qkv_bias: bias on the Q/K/V projections (True in the CIFAR code, False in ImageNet/DVS).
        scale: multiplier of the attention product; attn_v_th: threshold of the neuron after the product.
        order: product order, see :func:`attention_product`.
        proj_bias: bias on the output projection (True in the official code; spikingjelly's SSA has none).
        proj_neuron: end with the output projection's LIF; False leaves it out, so the output is the projection's
            batch-norm output (the membrane-shortcut block asks for that, :func:`~.base.output_projection`).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        qkv_bias: bool = False,
        scale: float = 0.125,
        attn_v_th: float = 0.5,
        order: str = "auto",
        proj_bias: bool = True,
        proj_neuron: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads, self.scale, self.order = heads, scale, order
        self.q = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.k = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.v = LinearBNSpike(dim, dim, bias=qkv_bias)
        self.attn_neuron = LIF(v_th=attn_v_th)
        self.proj = output_projection(dim, proj_bias, proj_neuron)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V spikes split into heads, each ``[T, B, heads, N, d]``."""
        return tuple(split_heads(p(x), self.heads) for p in (self.q, self.k, self.v))  # type: ignore[return-value]

    def product(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The unscaled attention product ``Q K^T V`` per head, ``[T, B, heads, N, d]``; variants override this."""
        return attention_product(q, k, v, self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.proj(self.attn_neuron(merge_heads(self.product(q, k, v) * self.scale)))
