"""What every attention mechanism shares: head splitting and the choice of product order."""

from __future__ import annotations

import torch

from ..kernels.spike_ops import spike_attention, spike_matmul
from ..layers import LinearBN, LinearBNSpike


def output_projection(dim: int, bias: bool = True, neuron: bool = True) -> LinearBN:
    """An attention's output unit ``[..., dim] -> [..., dim]``: linear, batch norm and LIF
    (:class:`~spikformers.layers.LinearBNSpike`), or with ``neuron=False`` linear and batch norm only
    (:class:`~spikformers.layers.LinearBN`, the same weights): the membrane input that a membrane-shortcut block
    (:class:`~spikformers.models.blocks.MembraneBlock`) adds to its residual stream."""
    return LinearBNSpike(dim, dim, bias=bias) if neuron else LinearBN(dim, dim, bias=bias)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, B, N, C] -> [T, B, heads, N, C // heads]`` (head h owns channels ``[h*d, (h+1)*d)``)."""
    T, B, N, C = x.shape
    return x.view(T, B, N, heads, C // heads).transpose(2, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, heads, N, d] -> [T, B, N, heads * d]``."""
    T, B, H, N, d = x.shape
    return x.transpose(2, 3).reshape(T, B, N, H * d)


def attention_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: str = "auto") -> torch.Tensor:
    """``Q K^T V`` without softmax over ``[..., N, d]`` operands, in the cheaper order for the shape.

    ``order="kv_first"`` computes ``Q (K^T V)`` (O(N d^2)), ``"qk_first"`` computes ``(Q K^T) V`` (O(N^2 d)),
    ``"auto"`` picks the cheaper: kv_first when ``d < N``. Both orders give the same numbers up to float
    rounding; for spikes the partial sums are small integers, so they agree exactly.
    """
    N, d = q.shape[-2], q.shape[-1]
    if order == "auto":
        order = "kv_first" if v.shape[-1] <= N and d <= N else "qk_first"
    if order == "kv_first":  # binary heads on the CPU: event-driven, in place; else ``@`` keeping spikes as bits
        out = spike_attention(q, k, v)
        return out if out is not None else spike_matmul(q, spike_matmul(k.transpose(-2, -1), v))
    if order == "qk_first":
        return spike_matmul(spike_matmul(q, k.transpose(-2, -1)), v)
    raise ValueError(f"attention product order must be 'auto', 'kv_first' or 'qk_first', got {order!r}")
