"""Block forms beside Spikformer's: the membrane-shortcut block of Spike-driven Transformer (docs/models.md).

Spikformer's block adds spike tensors (``x + Attn(x)`` with ``Attn`` ending in a LIF). The membrane-shortcut
block instead carries real-valued membrane input along the residual stream and spikes it at the start of
each branch:

    x = x + BN(Linear(Attn'(LIF(x))))         Attn' = the attention without its final LIF
    x = x + BN(Linear(LIF(BN(Linear(LIF(x))))))

Same parameters as the Spikformer block; ``drop_path`` applies stochastic depth to both branches.
Any attention that can end without its output neuron (option ``proj_neuron``: SSA, PSA, A2OS2A, SDSA,
FF-LiDiff) fits: the block builds it with ``proj_neuron=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention import attention_class, create_attention, takes_option
from ..layers import DropPath, LinearBN
from ..neurons import LIF


class MembraneMLP(nn.Module):
    """``[T, B, N, C] -> [T, B, N, C]``: LIF, Linear-BN to ``ratio * C``, LIF, Linear-BN back (no final LIF)."""

    def __init__(self, dim: int, ratio: float = 4.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1_neuron = LIF()
        self.fc1 = LinearBN(dim, hidden, bias=bias)
        self.fc2_neuron = LIF()
        self.fc2 = LinearBN(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc2_neuron(self.fc1(self.fc1_neuron(x))))


class MembraneBlock(nn.Module):
    """Spike-driven Transformer block ``[T, B, N, D] -> [T, B, N, D]`` with membrane shortcuts (see module doc)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        attn: str | type[nn.Module] = "sdsa",
        attn_defaults: dict[str, Any] | None = None,
        drop_path: float = 0.0,
        mlp_bias: bool = True,
        **attn_kwargs: Any,
    ) -> None:
        super().__init__()
        self.shortcut_neuron = LIF()
        if not takes_option(attn, "proj_neuron"):
            raise ValueError(f"block='membrane' needs an attention that can end without its output neuron (option "
                             f"proj_neuron); {attention_class(attn).__name__} has no such option")
        if attn_kwargs.get("proj_neuron", False):
            raise ValueError("block='membrane' builds its attention with proj_neuron=False; drop proj_neuron=True")
        # the residual adds membrane input, not spikes
        self.attn = create_attention(attn, dim, heads, defaults=attn_defaults, **{**attn_kwargs, "proj_neuron": False})
        self.mlp = MembraneMLP(dim, mlp_ratio, bias=mlp_bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.shortcut_neuron(x)))
        return x + self.drop_path(self.mlp(x))
