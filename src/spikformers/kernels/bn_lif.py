"""Batch norm fused with the LIF after it, for the units ``neuron(BN(project(x)))`` on the compiled CPU path.

One autograd node from the projection's output ``y`` to spikes (``csrc/bn_neuron.cpp``). Forward takes the
batch statistics and fires in two passes over ``y``; the norm's output never exists as a tensor. Backward
rebuilds it and the membranes from ``y`` once, in the pass that takes the per-channel sums the norm's gradient
needs and keeps the gradient at the norm's output in a scratch buffer; a second, streaming pass turns that into
``y``'s gradient. So a unit keeps ``y`` alone for backward, where the separate norm and neuron keep ``y`` (the
norm) and the norm's output (the neuron). Inside a unit, where ``y`` is private, the gradient is written over ``y``
itself and the scratch buffer passes on to the next unit's backward, so a backward pass allocates no fresh tensor
the size of ``y`` per unit (the separate modules allocate two): fresh memory costs a page fault per 4 KiB here,
about 25 ms per 100 MB. The buffer is let go when the next forward starts. Gradients are exact (the membranes are
recomputed, not quantised); statistics are accumulated in float64.

A conv unit followed by MaxPool(3, stride 2, padding 1) can pool inside the same node (``pool=True``): it returns
the pooled spikes, and its backward routes their gradient through the pool while it rebuilds the spikes (to the
first spike of each window, as torch's pool does), so neither the full-size spike map nor its gradient is ever
made.

Batch-norm semantics follow ``torch.nn.functional.batch_norm``: batch statistics in training (or without running
statistics), running mean and unbiased variance updated with ``momentum`` (cumulative when it is None), running
statistics in evaluation. Spikes agree with the unfused unit except where the membrane lies within float
rounding of the threshold (the norm's output is computed as ``y * scale + shift``, not torch's exact sequence).
"""

from __future__ import annotations

import torch
from torch import nn

from . import cpp
from .common import NeuronParams
from .config import get_kernel_config

Dims = tuple[int, int, int, int]  # (T, A, C, P): steps, rows per step, channels, positions per channel plane

_SCRATCH: list[torch.Tensor] = []  # at most one free buffer, handed from one unit's backward to the next


def _statistics(y: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, dims: Dims, pre_bias: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(mean, invstd, batch statistics used?) in float64, updating the running statistics as ``F.batch_norm``.

    The norm's input is ``y + pre_bias`` (the projection's bias, per channel, not added to ``y``); ``mean`` is
    returned relative to ``y`` itself, i.e. the norm's mean minus ``pre_bias``.
    """
    b = None if pre_bias is None else pre_bias.detach().to(torch.float64)
    batch_stats = bn.training or bn.running_mean is None
    if not batch_stats:
        mean = bn.running_mean.to(torch.float64)
        return mean if b is None else mean - b, torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps), False
    count = dims[0] * dims[1] * dims[3]
    if count <= 1:
        raise ValueError(f"batch norm over {count} value per channel in training: expected more than 1 value")
    total, squares = cpp.bn_stats(y, dims)
    mean = total / count
    var = (squares / count - mean * mean).clamp_(min=0.0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            norm_mean = mean if b is None else mean + b
            bn.running_mean.mul_(1 - factor).add_(norm_mean.to(bn.running_mean.dtype), alpha=factor)
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
    ``pre_bias``: the projection's bias, which the norm's input includes but ``y`` does not (``mean`` is relative
    to ``y``); its gradient, the sum of ``y``'s over all but channels, comes from the per-channel sums: exactly 0
    with batch statistics (the norm subtracts any constant), ``gamma * invstd * sum(gz)`` with running ones.
    """

    @staticmethod
    def forward(ctx, y, weight, bias, pre_bias, mean, invstd, batch_stats, dims, params, private, pool_w):  # type: ignore[override]
        scale, shift = _affine(mean, invstd, weight, bias, y.dtype)
        out = cpp.bn_lif_forward(y, scale, shift, dims, params, _output(y, pool_w), pool_w)
        ctx.save_for_backward(y, weight, scale, shift, mean, invstd)
        ctx.meta = (batch_stats, dims, params, private, pool_w)
        ctx.spent = False
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.spent:
            raise RuntimeError(
                "a fused batch-norm + LIF unit wrote its gradient over its saved input, so it cannot run backward "
                "twice (retain_graph=True); run it under spikformers.kernels.kernel_config(fused_bn_neuron=False)"
            )
        y, weight, scale, shift, mean, invstd = ctx.saved_tensors
        batch_stats, dims, params, private, pool_w = ctx.meta
        grad = grad.contiguous()
        mean_y = mean.to(y.dtype)
        gz = _scratch_like(y) if ctx.needs_input_grad[0] else None  # dL/d(norm's output), from pass 1
        sum_g, sum_gc = cpp.bn_lif_sums(grad, y, scale, shift, mean_y, dims, params, pool_w, gz)
        gy = gw = gb = gpb = None
        gamma = torch.ones_like(invstd) if weight is None else weight.detach().to(torch.float64)
        k1 = gamma * invstd
        if ctx.needs_input_grad[3]:
            gpb = (torch.zeros_like(k1) if batch_stats else k1 * sum_g).to(y.dtype)
        if ctx.needs_input_grad[0]:
            if batch_stats:  # the batch mean and variance depend on y too
                count = dims[0] * dims[1] * dims[3]
                k = torch.stack([k1, -gamma * invstd**3 * (sum_gc / count), -k1 * (sum_g / count)])
            else:
                k = torch.stack([k1, torch.zeros_like(k1), torch.zeros_like(k1)])
            ctx.spent = private
            gy = cpp.bn_apply_grad(gz, y, mean_y, k.to(y.dtype), dims, y if private else gz)
            if private:  # gz's buffer is free again
                _SCRATCH[:] = [gz]
        if weight is not None and ctx.needs_input_grad[1]:
            gw = (sum_gc * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = sum_g.to(y.dtype)
        return gy, gw, gb, gpb, None, None, None, None, None, None, None


def _scratch_like(y: torch.Tensor) -> torch.Tensor:
    """A tensor like ``y`` (contents undefined) on the free scratch buffer when it is large enough, else new."""
    free = _SCRATCH.pop() if _SCRATCH else None
    if free is None or free.dtype != y.dtype or free.untyped_storage().nbytes() < y.numel() * y.element_size():
        return torch.empty_like(y)
    return free.new_empty(0).set_(free.untyped_storage(), 0, y.shape)


def _output(y: torch.Tensor, pool_w: int) -> torch.Tensor:
    """The spikes' tensor: like ``y``, or with its last two sides pooled (3x3, stride 2, padding 1) when pooling."""
    return y.new_empty(cpp.pooled_shape(tuple(y.shape))) if pool_w else torch.empty_like(y)


def bn_lif(y: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, params: NeuronParams, dims: Dims,
           overwrite: bool = False, pool: bool = False, pre_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Spikes of ``LIF(bn(y))`` for a contiguous CPU float ``y`` viewed as ``dims = (T, A, C, P)``, channels ``C``.

    ``overwrite``: ``y`` is a private tensor nobody reads again: without autograd the spikes are written over it
    (unless pooling), with autograd backward writes ``y``'s gradient over it. ``pool``: ``y`` is conv planes
    ``[..., H, W]`` (``P = H * W``) and the spikes are max-pooled (3x3, stride 2, padding 1) in the same pass.
    ``pre_bias``: the projection's bias ``[C]``, left out of ``y`` and folded into the norm here (it costs neither
    the add in forward nor the column sum of ``y``'s gradient in backward).
    """
    pool_w = y.shape[-1] if pool else 0
    if pool and (y.dim() < 2 or y.shape[-2] * pool_w != dims[3]):
        raise ValueError(f"pooling needs y as [..., H, W] planes of P = {dims[3]} positions, got {tuple(y.shape)}")
    mean, invstd, batch_stats = _statistics(y, bn, dims, pre_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, bn.weight, bn.bias, pre_bias)):
        _SCRATCH.clear()  # a new forward: the last backward's buffer is not needed until the next one
        return BNLIFFunction.apply(y, bn.weight, bn.bias, pre_bias, mean, invstd, batch_stats, dims, params, overwrite,
                                   pool_w)
    scale, shift = _affine(mean, invstd, bn.weight, bn.bias, y.dtype)
    out = y if overwrite and not pool else _output(y, pool_w)
    return cpp.bn_lif_forward(y, scale, shift, dims, params, out, pool_w)


def fused_params(bn: nn.Module, neuron: nn.Module) -> NeuronParams | None:
    """The neuron's parameters when ``neuron(bn(.))`` may run as one :func:`bn_lif` call as far as the modules and the
    switchboard go, else None: the ``fused_bn_neuron`` switch on and ``observable`` off (:mod:`.config`), a batch
    norm, and a plain LIF on a fused backend (``neuron.unit_params()``). Whether the unit's own modules must be
    called instead (a hook on them) is the unit's decision."""
    cfg = get_kernel_config()
    if not cfg.fused_bn_neuron or cfg.observable:
        return None
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not hasattr(neuron, "unit_params"):
        return None
    return neuron.unit_params()


def takes(y: torch.Tensor) -> bool:
    """Whether the fused kernels take ``y``: a non-empty contiguous CPU float tensor (float32 or float64)."""
    return y.is_contiguous() and y.numel() > 0 and cpp.supports(y)
