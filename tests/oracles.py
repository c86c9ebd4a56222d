"""Independent oracles for the tests: the papers' equations written out as plain loops and matmuls.

Nothing here imports the library: each function is the equation as the papers state it, so a test that compares
a module with one of these does not take its expected value from the code under test. Tensors are time first,
``[T, ...]``; a ``grad`` through a spike uses the surrogate the papers name (sigmoid for the LIF, straight-through
for the ternary neuron), built with the ``hard + (soft - soft.detach())`` trick rather than a custom Function.
"""

from __future__ import annotations

import numpy as np
import torch


def _with_surrogate(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward ``hard``, backward through ``soft``."""
    return hard + (soft - soft.detach())


def lif_loop(x: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, v_reset: float = 0.0, alpha: float = 4.0
             ) -> torch.Tensor:
    """LIF over ``x: [T, ...]``: ``h = v + (x - (v - v_reset)) / tau``; fire ``h >= v_th``; hard reset with the
    reset detached; backward ``d s / d h = alpha sigmoid(alpha u) (1 - sigmoid(alpha u))``, ``u = h - v_th``."""
    v = torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        hard = (h >= v_th).to(x.dtype)
        s = _with_surrogate(hard, torch.sigmoid(alpha * (h - v_th)))
        v = h * (1 - hard) + v_reset * hard
        out.append(s)
    return torch.stack(out)


def ternary_guo_loop(x: torch.Tensor, decay: float = 0.25, v_th: float = 1.0) -> torch.Tensor:
    """Ternary Spike (Guo et al. 2024): ``u = decay u + x``; emit ``sign(u)`` where ``|u| >= v_th / 2``, else 0;
    hard reset ``u = u (1 - |s|)`` (reset detached); backward: straight-through where ``|u| <= 1``."""
    u = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        u = decay * u + x[t]
        hard = torch.where(u >= 0.5 * v_th, 1.0, 0.0) - torch.where(u <= -0.5 * v_th, 1.0, 0.0)
        hard = hard.to(x.dtype)
        s = _with_surrogate(hard, u.clamp(-1.0, 1.0))
        u = u * (1 - hard.abs())
        out.append(s)
    return torch.stack(out)


def ternary_lif_loop(x: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0) -> torch.Tensor:
    """LIF-style ternary neuron: LIF charge (reset 0), ``+1`` at ``h >= v_th``, ``-1`` at ``h <= -v_th``, hard reset;
    backward: the sigmoid surrogate at each of the two thresholds."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        up, down = (h >= v_th).to(x.dtype), (h <= -v_th).to(x.dtype)
        s = (_with_surrogate(up, torch.sigmoid(alpha * (h - v_th)))
             - _with_surrogate(down, torch.sigmoid(alpha * (-h - v_th))))
        v = h * (1 - (up + down))
        out.append(s)
    return torch.stack(out)


def batch_norm(y: torch.Tensor, bn: torch.nn.Module, train: bool = False) -> torch.Tensor:
    """Batch norm over the last (channel) axis of ``y``: running statistics in eval mode; in training mode the
    mean and biased variance over every other axis (T, B and tokens pooled), as BatchNorm1d on ``[T*B*N, C]``."""
    if train:
        flat = y.reshape(-1, y.shape[-1])
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    w, b = bn.weight.detach(), bn.bias.detach()
    return (y - mean.to(y.dtype)) / torch.sqrt(var.to(y.dtype) + bn.eps) * w.to(y.dtype) + b.to(y.dtype)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``x W^T + b`` over the last axis."""
    y = x @ layer.weight.detach().to(x.dtype).T
    return y if layer.bias is None else y + layer.bias.detach().to(x.dtype)


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every batch norm of ``module`` non-trivial affine parameters and running statistics, chosen so that
    the neurons after them fire often (small variances, gains above 1, a positive shift)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(1.0 + 1.5 * torch.rand(c, generator=gen))
                m.bias.copy_(0.5 + 0.5 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.05 + 0.25 * torch.rand(c, generator=gen))


def atis_encode(x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> bytes:
    """ATIS ``.bin`` words (N-MNIST): 5 bytes big-endian, x (bits 39-32), y (31-24), polarity (23), t in us (22-0)."""
    words = bytearray()
    for xi, yi, pi, ti in zip(x.tolist(), y.tolist(), p.tolist(), t.tolist()):
        words += bytes([xi, yi, (pi << 7) | ((ti >> 16) & 0x7F), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(words)


def atis_decode(data: bytes) -> tuple[list[int], list[int], list[int], list[int]]:
    """The inverse of :func:`atis_encode` for files without overflow words: ``(x, y, p, t)`` lists."""
    xs, ys, ps, ts = [], [], [], []
    for i in range(0, len(data), 5):
        b = data[i : i + 5]
        xs.append(b[0])
        ys.append(b[1])
        ps.append(b[2] >> 7)
        ts.append(((b[2] & 0x7F) << 16) | (b[3] << 8) | b[4])
    return xs, ys, ps, ts


def frames_by_number(x: list[int], y: list[int], p: list[int], T: int, h: int, w: int) -> np.ndarray:
    """Event counts ``[T, 2, h, w]``: with N events and n = N // T, slice i holds events [i n, (i+1) n) in
    recorded order and the last slice also the remainder (every event in the last slice when N < T)."""
    out = np.zeros((T, 2, h, w), dtype=np.int64)
    n = len(x) // T
    for i in range(len(x)):
        step = T - 1 if n == 0 else min(i // n, T - 1)
        out[step, p[i], y[i], x[i]] += 1
    return out
