"""The few layers every backbone shares: projections with batch norm over folded time, and spiking convs.

Convs, linears and batch norms do not care about time, so they run on ``[T*B, ...]``; neurons get ``[T, B, ...]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .neurons import Neuron, create_neuron


def fold(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T*B, ...]``."""
    return x.flatten(0, 1)


def unfold(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T*B, ...] -> [T, B, ...]``."""
    return x.unflatten(0, (T, -1))


class LinearBN(nn.Module):
    """Token-wise projection then batch norm over channels: ``[..., N, C_in] -> [..., N, C_out]``.

    Equivalent to the papers' Conv1d(k=1)+BN1d on channel-major tensors; BN statistics pool over T, B and N.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return self.bn(y.reshape(-1, y.shape[-1])).view_as(y)


class LinearBNSpike(LinearBN):
    """``neuron(BN(Linear(x)))`` on ``[T, B, N, C_in] -> [T, B, N, C_out]``: the papers' "CBL" unit."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        neuron: str | type[Neuron] = "lif",
        **neuron_kwargs: Any,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.neuron = create_neuron(neuron, **neuron_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(super().forward(x))


class ConvBN(nn.Module):
    """Conv2d (no bias unless asked) then BatchNorm2d on ``[T, B, C, H, W]``, T folded into the batch."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold(self.bn(self.conv(fold(x))), x.shape[0])


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """MaxPool(3, stride 2, padding 1) on ``[T, B, C, H, W]``: halves H and W, rounding up."""
    return unfold(nn.functional.max_pool2d(fold(x), 3, 2, 1), x.shape[0])


class ConvBNSpike(nn.Module):
    """``Conv3x3 -> BN -> neuron`` on ``[T, B, C, H, W]``, optionally max-pooling the spikes afterwards."""

    def __init__(
        self, in_chans: int, out_chans: int, pool: bool = False, neuron: str | type[Neuron] = "lif"
    ) -> None:
        super().__init__()
        self.conv = ConvBN(in_chans, out_chans, 3)
        self.neuron = create_neuron(neuron)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.neuron(self.conv(x))
        return max_pool(x) if self.pool else x


class MLP(nn.Module):
    """Spiking MLP ``[T, B, N, C] -> [T, B, N, C]``: two CBL units, hidden width ``ratio * C`` (biases on)."""

    def __init__(self, dim: int, ratio: float = 4.0, neuron: str | type[Neuron] = "lif") -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = LinearBNSpike(dim, hidden, bias=True, neuron=neuron)
        self.fc2 = LinearBNSpike(hidden, dim, bias=True, neuron=neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def time_input(x: torch.Tensor, T: int, in_chans: int) -> torch.Tensor:
    """Bring model input to ``[T, B, C, H, W]``: repeat a static ``[B, C, H, W]`` image T times (direct encoding)."""
    if x.dim() == 4:
        return x.unsqueeze(0).expand(T, *x.shape)
    if x.dim() == 5:
        return x
    raise ValueError(
        f"model input must be [B, C, H, W] or [T, B, C, H, W], got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
    )
