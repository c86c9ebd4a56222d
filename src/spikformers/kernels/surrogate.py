"""Surrogate gradients: the derivatives used in place of the Heaviside step's zero/infinite gradient."""

from __future__ import annotations

import torch


def sigmoid_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Derivative of ``sigmoid(alpha * u)``: the surrogate for ``d spike / d u`` used by every LIF here."""
    sg = torch.sigmoid(alpha * u)
    return alpha * sg * (1.0 - sg)


class SigmoidSpike(torch.autograd.Function):
    """Heaviside step ``u >= 0`` forward, ``sigmoid(alpha * u)`` derivative backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad * sigmoid_grad(u, ctx.alpha), None


class TernarySpike(torch.autograd.Function):
    """``sign(u)`` where ``|u| >= threshold`` else 0; straight-through gradient inside ``[-1, 1]``."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, threshold: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        return torch.sign(u) * (u.abs() >= threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad * (u.abs() <= 1.0).to(grad.dtype), None


def heaviside_sigmoid(u: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """Spike ``u >= 0`` with the sigmoid surrogate gradient of steepness ``alpha``."""
    return SigmoidSpike.apply(u, alpha)
