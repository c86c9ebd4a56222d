"""Eager fused LIF: one autograd node for all T steps, spikes saved as uint8, membrane recomputed in backward."""

from __future__ import annotations

import torch

from ..surrogate import sigmoid_grad


def _charge(v: torch.Tensor, x: torch.Tensor, tau: float, v_reset: float) -> torch.Tensor:
    return v + (x - (v - v_reset)) / tau


class _LIFFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tau, v_th, v_reset, alpha, detach_reset):  # type: ignore[override]
        v = torch.full_like(x[0], v_reset)
        spikes = torch.empty_like(x)
        for t in range(x.shape[0]):
            h = _charge(v, x[t], tau, v_reset)
            s = h >= v_th
            spikes[t] = s
            v = torch.where(s, torch.full_like(h, v_reset), h)
        ctx.save_for_backward(x, spikes.to(torch.uint8))
        ctx.params = (tau, v_th, v_reset, alpha, detach_reset)
        return spikes

    @staticmethod
    def backward(ctx, grad_s):  # type: ignore[override]
        x, spikes = ctx.saved_tensors
        tau, v_th, v_reset, alpha, detach_reset = ctx.params
        T = x.shape[0]
        # recompute the membrane before firing, h[t]
        hs = torch.empty_like(x)
        v = torch.full_like(x[0], v_reset)
        for t in range(T):
            h = _charge(v, x[t], tau, v_reset)
            hs[t] = h
            v = torch.where(spikes[t].bool(), torch.full_like(h, v_reset), h)
        grad_x = torch.empty_like(x)
        grad_v = torch.zeros_like(x[0])
        for t in reversed(range(T)):
            s = spikes[t].to(x.dtype)
            sg = sigmoid_grad(hs[t] - v_th, alpha)
            dv_dh = 1.0 - s
            if not detach_reset:
                dv_dh = dv_dh + (v_reset - hs[t]) * sg
            grad_h = grad_s[t] * sg + grad_v * dv_dh
            grad_x[t] = grad_h / tau
            grad_v = grad_h * (1.0 - 1.0 / tau)
        return grad_x, None, None, None, None, None


def lif_fused(
    x: torch.Tensor,
    tau: float = 2.0,
    v_th: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
) -> torch.Tensor:
    """Fused multi-step LIF over ``x: [T, ...]`` with a hand-written backward (see module docstring)."""
    return _LIFFused.apply(x, tau, v_th, v_reset, alpha, detach_reset)
