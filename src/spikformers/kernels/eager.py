"""Eager fused path in plain torch ops: the fallback used wherever no compiled kernel applies.

One autograd node for all T steps; it saves the same compact state as the compiled kernels (see
:mod:`.common`) and recomputes the rest in backward. Arithmetic mirrors the reference loops op by op.
"""

from __future__ import annotations

import torch

from .common import Q_MAX, NeuronParams, saved_shape, surrogate_scale
from .surrogate import sigmoid_grad


def _pack(planes: torch.Tensor, t: int, n: int, value: torch.Tensor, bit: torch.Tensor, save: str, to_q: float):
    q = (value * to_q + 0.5).to(torch.int32).clamp_(max=Q_MAX[save])
    lo = slice(t * n, (t + 1) * n)
    planes[0, lo] = (q & 0xFF).to(torch.uint8).flatten()
    if save == "q24":
        planes[1, lo] = ((q >> 8) & 0xFF).to(torch.uint8).flatten()
        top = (q >> 16) & 0x7F
    else:
        top = (q >> 8) & 0x7F
    planes[-1, lo] = (top | (bit.to(torch.int32) << 7)).to(torch.uint8).flatten()


def _unpack(planes: torch.Tensor, t: int, n: int, save: str, from_q: float, like: torch.Tensor):
    lo = slice(t * n, (t + 1) * n)
    q = planes[0, lo].to(torch.int32)
    top = planes[-1, lo].to(torch.int32)
    if save == "q24":
        q = q | (planes[1, lo].to(torch.int32) << 8) | ((top & 0x7F) << 16)
    else:
        q = q | ((top & 0x7F) << 8)
    value = (q.to(like.dtype) * from_q).view_as(like)
    return value, (top >= 0x80).view_as(like)


def forward(
    x: torch.Tensor, kind: str, p: NeuronParams, save: str, v_init: torch.Tensor | None = None,
    v_final: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes for ``x: [T, ...]`` and the state saved for backward in format ``save`` (``"none"``: nothing).

    ``v_init: [...]`` (optional) is the initial membrane; the final one is written into ``v_final`` when given.
    """
    T = x.shape[0]
    n = x[0].numel()
    out = torch.empty_like(x)
    state = None
    if save != "none":
        shape, dtype = saved_shape(save, x)
        state = torch.empty(shape, dtype=dtype, device=x.device)
    to_q = Q_MAX.get(save, 1) / surrogate_scale(kind, p.alpha)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    v = torch.full_like(x[0], p.v_reset if kind == "lif" else 0.0) if v_init is None else v_init.view_as(x[0])
    for t in range(T):
        if kind == "ternary_guo":
            u = p.decay * v + x[t]
            s = torch.sign(u) * (u.abs() >= 0.5 * p.v_th).to(x.dtype)
            fired = s != 0
            out[t] = s
            v = torch.where(fired, zero, u)
            if save == "code":
                code = (u.abs() <= 1.0).to(torch.uint8) | (fired.to(torch.uint8) << 1)
                state[t * n:(t + 1) * n] = code.flatten()
            continue
        if kind == "lif":
            h = v + (x[t] - (v - p.v_reset)) / p.tau
            u = h - p.v_th
            fired = u >= 0
            out[t] = fired
            v = torch.where(fired, torch.full_like(h, p.v_reset), h)
            if save in ("q16", "q24"):
                _pack(state, t, n, sigmoid_grad(u, p.alpha), fired, save, to_q)
        else:
            h = v + (x[t] - v) / p.tau
            up, un = h - p.v_th, -h - p.v_th
            s = (up >= 0).to(x.dtype) - (un >= 0).to(x.dtype)
            fired = s != 0
            out[t] = s
            v = torch.where(fired, zero, h)
            if save in ("q16", "q24"):
                _pack(state, t, n, sigmoid_grad(up, p.alpha) + sigmoid_grad(un, p.alpha), fired, save, to_q)
        if save == "exact":
            state[t] = h
    if v_final is not None:
        v_final.view_as(v).copy_(v)
    return out, state


def backward(grad: torch.Tensor, state: torch.Tensor, kind: str, p: NeuronParams, save: str) -> torch.Tensor:
    """Gradient w.r.t. the input from the gradient w.r.t. the spikes and the state saved by :func:`forward`."""
    T = grad.shape[0]
    n = grad[0].numel()
    grad_x = torch.empty_like(grad)
    gv = torch.zeros_like(grad[0])
    from_q = surrogate_scale(kind, p.alpha) / Q_MAX.get(save, 1)
    for t in reversed(range(T)):
        if kind == "ternary_guo":
            code = state[t * n:(t + 1) * n].view_as(grad[0])
            ste = (code & 1).to(grad.dtype)
            keep = 1.0 - ((code >> 1) & 1).to(grad.dtype)
            gu = grad[t] * ste + gv * keep
            grad_x[t] = gu
            gv = p.decay * gu
            continue
        g_spike = grad[t]
        if save == "exact":
            h = state[t]
            if kind == "lif":
                u = h - p.v_th
                sg = sigmoid_grad(u, p.alpha)
                keep = (u < 0).to(grad.dtype)
                if not p.detach_reset:
                    g_spike = g_spike + gv * (p.v_reset - h)
            else:
                up, un = h - p.v_th, -h - p.v_th
                sg = sigmoid_grad(up, p.alpha) + sigmoid_grad(un, p.alpha)
                keep = ((up >= 0) == (un >= 0)).to(grad.dtype)
        else:
            sg, fired = _unpack(state, t, n, save, from_q, grad[t])
            keep = (~fired).to(grad.dtype)
        gh = g_spike * sg + gv * keep
        g = gh / p.tau
        grad_x[t] = g
        gv = gh - g
    return grad_x
