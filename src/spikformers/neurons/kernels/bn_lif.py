"""Batch norm fused with the LIF after it, for the units ``neuron(BN(project(x)))`` on the compiled CPU path.

One autograd node from the projection's output ``y`` to spikes (``csrc/bn_neuron.cpp``). Forward takes the
batch statistics and fires in two passes over ``y``; the norm's output never exists as a tensor. Backward
rebuilds it and the membranes from ``y`` (twice: once for the per-channel sums the norm's gradient needs, once to
write the gradient), so a unit keeps ``y`` alone for backward, where the separate norm and neuron keep ``y`` (the
norm) and the norm's output (the neuron). Inside a unit, where ``y`` is private, the gradient is written over
``y`` itself, so backward allocates nothing the size of ``y`` (the separate modules allocate two such gradients).
Gradients are exact (the membranes are recomputed, not quantised); statistics are accumulated in float64.

Batch-norm semantics follow ``torch.nn.functional.batch_norm``: batch statistics in training (or without running
statistics), running mean and unbiased variance updated with ``momentum`` (cumulative when it is None), running
statistics in evaluation. Spikes agree with the unfused unit except where the membrane lies within float
rounding of the threshold (the norm's output is computed as ``y * scale + shift``, not torch's exact sequence).
"""

from __future__ import annotations

import torch
from torch import nn

from . import cpu
from .common import NeuronParams

Dims = tuple[int, int, int, int]  # (T, A, C, P): steps, rows per step, channels, positions per channel plane

_ENABLED = True


def set_fused_bn_neuron(enabled: bool) -> bool:
    """Switch the fused batch-norm + LIF units on or off (off: the norm and the neuron run as separate modules,
    as before); returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def _statistics(y: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, dims: Dims) -> tuple[torch.Tensor, ...]:
    """(mean, invstd, batch statistics used?) in float64, updating the running statistics as ``F.batch_norm``."""
    batch_stats = bn.training or bn.running_mean is None
    if not batch_stats:
        mean = bn.running_mean.to(torch.float64)
        return mean, torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps), False
    count = dims[0] * dims[1] * dims[3]
    if count <= 1:
        raise ValueError(f"batch norm over {count} value per channel in training: expected more than 1 value")
    total, squares = cpu.bn_stats(y, dims)
    mean = total / count
    var = (squares / count - mean * mean).clamp_(min=0.0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            unbiased = var * (count / (count - 1))
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return mean, torch.rsqrt(var + bn.eps), True


def _affine(mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale = gamma * invstd`` and ``shift = beta - mean * scale`` (in float64, then ``dtype``)."""
    scale = invstd if weight is None else weight.detach().to(torch.float64) * invstd
    shift = -mean * scale if bias is None else bias.detach().to(torch.float64) - mean * scale
    return scale.to(dtype), shift.to(dtype)


class BNLIFFunction(torch.autograd.Function):
    """``LIF(batch_norm(y))`` with gradients for ``y``, the norm's weight and its bias.

    ``private``: ``y`` is the caller's own tensor that nobody reads after this node; backward then writes the
    gradient over it instead of allocating one (and refuses to run a second time, as ``y`` is gone).
    """

    @staticmethod
    def forward(ctx, y, weight, bias, mean, invstd, batch_stats, dims, params, private):  # type: ignore[override]
        scale, shift = _affine(mean, invstd, weight, bias, y.dtype)
        out = cpu.bn_lif_forward(y, scale, shift, dims, params, torch.empty_like(y))
        ctx.save_for_backward(y, weight, scale, shift, mean, invstd)
        ctx.meta = (batch_stats, dims, params, private)
        ctx.spent = False
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.spent:
            raise RuntimeError(
                "a fused batch-norm + LIF unit wrote its gradient over its saved input, so it cannot run backward "
                "twice (retain_graph=True); call spikformers.neurons.kernels.set_fused_bn_neuron(False) for that"
            )
        y, weight, scale, shift, mean, invstd = ctx.saved_tensors
        batch_stats, dims, params, private = ctx.meta
        grad = grad.contiguous()
        mean_y = mean.to(y.dtype)
        sum_g, sum_gc = cpu.bn_lif_sums(grad, y, scale, shift, mean_y, dims, params)
        gy = gw = gb = None
        if ctx.needs_input_grad[0]:
            gamma = torch.ones_like(invstd) if weight is None else weight.detach().to(torch.float64)
            k1 = gamma * invstd
            if batch_stats:  # the batch mean and variance depend on y too
                count = dims[0] * dims[1] * dims[3]
                k = torch.stack([k1, -gamma * invstd**3 * (sum_gc / count), -k1 * (sum_g / count)])
            else:
                k = torch.stack([k1, torch.zeros_like(k1), torch.zeros_like(k1)])
            ctx.spent = private
            gy = cpu.bn_lif_grad(grad, y, scale, shift, mean_y, k.to(y.dtype), dims, params,
                                 y if private else torch.empty_like(y))
        if weight is not None and ctx.needs_input_grad[1]:
            gw = (sum_gc * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = sum_g.to(y.dtype)
        return gy, gw, gb, None, None, None, None, None, None


def bn_lif(y: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, params: NeuronParams, dims: Dims,
           overwrite: bool = False) -> torch.Tensor:
    """Spikes of ``LIF(bn(y))`` for a contiguous CPU float ``y`` viewed as ``dims = (T, A, C, P)``, channels ``C``.

    ``overwrite``: ``y`` is a private tensor nobody reads again: without autograd the spikes are written over it,
    with autograd backward writes ``y``'s gradient over it.
    """
    mean, invstd, batch_stats = _statistics(y, bn, dims)
    if torch.is_grad_enabled() and (y.requires_grad or (bn.weight is not None and bn.weight.requires_grad)):
        return BNLIFFunction.apply(y, bn.weight, bn.bias, mean, invstd, batch_stats, dims, params, overwrite)
    scale, shift = _affine(mean, invstd, bn.weight, bn.bias, y.dtype)
    return cpu.bn_lif_forward(y, scale, shift, dims, params, y if overwrite else torch.empty_like(y))


def hooked(m: nn.Module) -> bool:
    """Whether ``m`` has a forward or backward hook of its own."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    g = nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


def can_fuse(y: torch.Tensor, bn: nn.Module, neuron: nn.Module, params: NeuronParams | None) -> bool:
    """Whether ``neuron(bn(y))`` may run as one :func:`bn_lif` call: fusing on, a plain LIF (``params`` given)
    on a fused backend, a batch norm, a contiguous float CPU ``y`` the kernels take, and no hook on either module
    (hooks such as the energy counter's must see the real intermediate tensors)."""
    return (
        _ENABLED
        and params is not None
        and isinstance(bn, nn.modules.batchnorm._BatchNorm)
        and y.is_contiguous()
        and y.numel() > 0
        and cpu.supports(y)
        and not (hooked(bn) or hooked(neuron) or _global_hooks())
    )
