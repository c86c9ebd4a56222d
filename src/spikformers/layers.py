"""The few layers every backbone shares: projections with batch norm over folded time, and spiking convs.

Convs, linears and batch norms do not care about time, so they run on ``[T*B, ...]``; neurons get ``[T, B, ...]``.
Their products go through :mod:`spikformers.kernels.spike_ops`, which keeps spike inputs compactly for backward and, on
the CPU, computes sparse spike inputs event-driven.

A unit (projection + batch norm + neuron) decides itself whether its norm and neuron run as one fused kernel or as
their modules. It calls its modules whenever someone watches (:func:`watched`): under
``kernel_config(observable=True)`` (what the energy counter sets) or when a hook sits on one of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .kernels import get_kernel_config, mark_scratch
from .kernels.bn_lif import bn_lif, fused_params, takes
from .kernels.common import NeuronParams
from .kernels.spike_ops import spike_conv2d, spike_linear, spike_max_pool
from .memory import recompute_in_backward
from .neurons import Neuron, create_neuron


def _hooked(m: nn.Module) -> bool:
    """Whether ``m`` has a forward or backward hook of its own."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether a hook is registered for every module (``torch.nn.modules.module.register_module_forward_hook``)."""
    g = nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


def watched(*parts: nn.Module) -> bool:
    """Whether a unit must call ``parts`` as modules on their real inputs rather than fuse them: someone watches
    the model from outside (the ``observable`` switch of :mod:`spikformers.kernels.config`, which the energy
    counter sets), or a hook sits on one of the parts or on every module."""
    return get_kernel_config().observable or _global_hooks() or any(_hooked(m) for m in parts)


def _fusable(bn: nn.Module, neuron: nn.Module) -> NeuronParams | None:
    """The neuron's parameters when a unit's ``neuron(bn(.))`` may run as one fused kernel, else None."""
    return None if watched(bn, neuron) else fused_params(bn, neuron)


def bn_neuron(y: torch.Tensor, bn: nn.Module, neuron: Neuron, T: int, per_channel: int, pool: bool = False,
              params: NeuronParams | None = None, pre_bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """``neuron(bn(y))`` as one fused batch-norm + LIF call (:mod:`spikformers.kernels.bn_lif`) when it
    applies, else None. ``y``: the projection's fresh output, ``T`` steps first, channels followed by
    ``per_channel`` positions (1 for tokens, H*W for conv planes). ``pool``: conv planes whose spikes are
    max-pooled (:func:`max_pool`) in the same call. ``params``: the fused parameters of the modules, if taken
    already; ``pre_bias``: the projection's bias, left out of ``y`` (see
    :func:`~spikformers.kernels.bn_lif.bn_lif`)."""
    params = _fusable(bn, neuron) if params is None else params
    if params is None or not takes(y):
        return None
    C = bn.num_features
    dims = (T, y.numel() // (T * C * per_channel), C, per_channel)
    return bn_lif(y, bn, params, dims, overwrite=True, pool=pool, pre_bias=pre_bias)


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

    def project(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The linear alone: ``[..., C_in] -> [..., C_out]``; ``bias=False`` leaves its bias out (``x W^T``)."""
        return spike_linear(x, self.linear.weight, self.linear.bias if bias else None)

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """The batch norm alone, over channels pooled across all other dimensions."""
        return self.bn(y.reshape(-1, y.shape[-1])).view_as(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.project(x))


class LinearBNSpike(LinearBN):
    """``neuron(BN(Linear(x)))`` on ``[T, B, N, C_in] -> [T, B, N, C_out]``: the papers' "CBL" unit.

    ``forward(x, added=z)`` adds ``z`` (``[..., C_out]``) to the linear's output before the norm:
    ``neuron(BN(Linear(x) + z))``. SpiLiFormer's FB-LiDiff adds its feedback through the same weights that way
    (``z = unit.project(F, bias=False)``).
    """

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
        self.recompute_bn_neuron = False  # spikformers.memory.recompute_bn_neurons: norm + neuron redone in backward

    def forward(self, x: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        params = _fusable(self.bn, self.neuron)
        if params is not None:  # fused: the linear's bias goes into the norm (no add, no column sum in backward)
            bias = self.linear.bias
            y = spike_linear(x, self.linear.weight)
            y = y if added is None else y + added
            spikes = bn_neuron(y, self.bn, self.neuron, x.shape[0], 1, params=params, pre_bias=bias)
            if spikes is not None:
                return spikes  # keeps y alone, like the recompute below
            y = y if bias is None else y + bias.to(y.dtype)  # a y the kernels do not take (autocast, other dtypes)
        else:
            y = self.project(x)
            y = y if added is None else y + added
        if self.recompute_bn_neuron and torch.is_grad_enabled():
            return recompute_in_backward(self, lambda y: self.neuron(self.normalize(y)), y)
        # the norm's output is the neuron's scratch
        return self.neuron(mark_scratch(self.normalize(y)))


class ConvBN(nn.Module):
    """Conv2d (no bias unless asked) then BatchNorm2d on ``[T, B, C, H, W]``, T folded into the batch."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out_chans)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The conv alone, ``[T, B, C_in, H, W] -> [T*B, C_out, H', W']`` (time stays folded)."""
        c = self.conv
        if c.padding_mode != "zeros" or c.dilation != (1, 1) or c.groups != 1:  # pragma: no cover - not built here
            return c(fold(x))
        if x.shape[0] > 1 and x.stride(0) == 0 and not get_kernel_config().observable:
            # a static image repeated over T (time_input's expand): convolve it once, repeat the result; autograd
            # sums the gradient over T first. Not when observed (the energy counter counts T convs).
            y = spike_conv2d(x[0], c.weight, c.bias, c.stride[0], c.padding[0])
            return y.unsqueeze(0).expand(x.shape[0], *y.shape).reshape(-1, *y.shape[1:])
        return spike_conv2d(fold(x), c.weight, c.bias, c.stride[0], c.padding[0])

    def normalize(self, y: torch.Tensor, T: int) -> torch.Tensor:
        """The batch norm alone, ``[T*B, C, H, W] -> [T, B, C, H, W]``."""
        return unfold(self.bn(y), T)

    def fire(self, y: torch.Tensor, neuron: Neuron, T: int, pool: bool = False) -> torch.Tensor | None:
        """``neuron`` on the batch norm of ``y`` (:meth:`project`'s fresh output) as one fused call, max-pooled in
        the same call when ``pool``: ``[T*B, C, H', W']`` spikes, or None where the fused kernel does not apply."""
        return bn_neuron(y, self.bn, neuron, T, y.shape[-2] * y.shape[-1], pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.project(x), x.shape[0])


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """MaxPool(3, stride 2, padding 1) on ``[T, B, C, H, W]``: halves H and W, rounding up."""
    return unfold(spike_max_pool(fold(x)), x.shape[0])


class ConvBNSpike(nn.Module):
    """``Conv3x3 -> BN -> neuron`` on ``[T, B, C, H, W]``, optionally max-pooling the spikes afterwards.

    ``pool_membrane``: pool the batch norm's output before the neuron instead (``Conv -> BN -> MaxPool ->
    neuron``, spikingjelly's Spikformer stem); the official Spikformer pools the spikes (the default).
    ``bias``: a bias on the conv (none by default). ``neuron=None``: no neuron, the unit returns the norm's
    output (max-pooled when ``pool``): Spike-driven Transformer's real-valued last SPS stage.
    """

    def __init__(
        self, in_chans: int, out_chans: int, pool: bool = False, neuron: str | type[Neuron] | None = "lif",
        pool_membrane: bool = False, bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = ConvBN(in_chans, out_chans, 3, bias=bias)
        self.neuron = None if neuron is None else create_neuron(neuron)
        self.pool = pool
        self.pool_membrane = pool_membrane
        self.recompute_bn_neuron = False  # spikformers.memory.recompute_bn_neurons: norm + neuron redone in backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        if self.neuron is None:  # the norm's output, pooled
            x = self.conv(x)
            return max_pool(x) if self.pool else x
        if self.pool and self.pool_membrane:  # max over the norm's output, then the neuron
            return self.neuron(max_pool(self.conv(x)))
        if watched(self.conv):  # whoever watches the conv + norm module sees it called
            x = self.neuron(mark_scratch(self.conv(x)))
        else:
            y = self.conv.project(x)
            spikes = self.conv.fire(y, self.neuron, T, pool=self.pool)
            if spikes is not None:  # pooled in the same call when self.pool
                return unfold(spikes, T)
            if self.recompute_bn_neuron and torch.is_grad_enabled():
                x = recompute_in_backward(self, lambda y: self.neuron(self.conv.normalize(y, T)), y)
            else:
                x = self.neuron(mark_scratch(self.conv.normalize(y, T)))
        return max_pool(x) if self.pool else x


class MLP(nn.Module):
    """Spiking MLP ``[T, B, N, C] -> [T, B, N, C]``: two CBL units, hidden width ``ratio * C``.

    ``bias``: biases on both projections (on in the official codes; spikingjelly's Spikformer has none).
    """

    def __init__(self, dim: int, ratio: float = 4.0, neuron: str | type[Neuron] = "lif", bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = LinearBNSpike(dim, hidden, bias=bias, neuron=neuron)
        self.fc2 = LinearBNSpike(hidden, dim, bias=bias, neuron=neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def time_input(x: torch.Tensor, T: int, in_chans: int, img_size: int | None = None, owner: str = "model"
               ) -> torch.Tensor:
    """Bring model input to ``[T, B, C, H, W]``: repeat a static ``[B, C, H, W]`` image T times (direct encoding).

    With ``img_size`` given, also check channels and size, raising a ValueError that names ``owner``, what it
    expects and what it got.
    """
    if x.dim() == 4:
        x = x.unsqueeze(0).expand(T, *x.shape)
    elif x.dim() != 5:
        raise ValueError(
            f"{owner} input must be [B, C, H, W] or [T, B, C, H, W], got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
        )
    if img_size is not None and (x.shape[2] != in_chans or x.shape[-2:] != (img_size, img_size)):
        raise ValueError(
            f"{owner} expects images of {in_chans} x {img_size} x {img_size} "
            f"(channels x height x width), got {tuple(x.shape[2:])} in an input of shape {tuple(x.shape)}"
        )
    return x


class DropPath(nn.Module):
    """Stochastic depth for time-first tensors ``[T, B, ...]``: drops a residual branch per SAMPLE.

    In training, multiplies by ``bernoulli(1 - p) / (1 - p)`` of shape ``[1, B, 1, ..., 1]``, so a sample's
    branch is kept or dropped for every time step, token and channel alike (timm's ``DropPath`` would draw
    along dim 0, which is time here). Identity in eval mode or with ``p = 0``. No parameters.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        mask = x.new_empty(shape).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block drop-path probabilities, a linear ramp from 0 (first block) to ``rate`` (last), as timm's
    ``linspace(0, rate, depth)`` (so a single block gets 0)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    if depth <= 1:
        return [0.0] * max(depth, 0)
    return [rate * i / (depth - 1) for i in range(depth)]
