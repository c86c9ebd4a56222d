"""The reference per-step loops: plain autograd, one time step at a time.

These are the oracles. Every fast path in :mod:`spikformers.kernels` is tested against them,
spikes exactly and gradients to 1e-6. They are deliberately written as the equations read (docs/models.md, "Neurons").
"""

from __future__ import annotations

import torch

from .surrogate import TernarySpike, heaviside_sigmoid


def lif_reference(
    x: torch.Tensor,
    tau: float = 2.0,
    v_th: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Multi-step LIF over ``x: [T, ...]`` returning spikes ``[T, ...]`` (charge, fire on ``>=``, hard reset).

    ``v_init: [...]`` replaces the initial membrane ``v_reset``; ``return_v`` also returns the final membrane.
    """
    v = torch.full_like(x[0], v_reset) if v_init is None else v_init.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        s = heaviside_sigmoid(h - v_th, alpha)
        s_reset = s.detach() if detach_reset else s
        v = h * (1.0 - s_reset) + v_reset * s_reset
        spikes.append(s)
    return (torch.stack(spikes), v) if return_v else torch.stack(spikes)


def ternary_reference(
    x: torch.Tensor, decay: float = 0.25, v_th: float = 1.0, v_init: torch.Tensor | None = None,
    return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ternary neuron (Guo et al. 2024) over ``x: [T, ...]``: spikes in {-1, 0, +1}, fire at ``|u| >= v_th/2``.

    ``v_init`` / ``return_v`` as for :func:`lif_reference`.
    """
    u = torch.zeros_like(x[0]) if v_init is None else v_init.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        u = decay * u + x[t]
        s = TernarySpike.apply(u, 0.5 * v_th)
        u = u * (1.0 - s.detach().abs())
        spikes.append(s)
    return (torch.stack(spikes), u) if return_v else torch.stack(spikes)


def ternary_lif_reference(
    x: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0, v_init: torch.Tensor | None = None,
    return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LIF-style ternary neuron: LIF charge, +1 at ``h >= v_th``, -1 at ``h <= -v_th``, hard reset.

    Backward: sigmoid surrogate for both thresholds. ``v_init`` / ``return_v`` as for :func:`lif_reference`.
    """
    v = torch.zeros_like(x[0]) if v_init is None else v_init.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = heaviside_sigmoid(h - v_th, alpha) - heaviside_sigmoid(-h - v_th, alpha)
        v = h * (1.0 - s.detach().abs())
        spikes.append(s)
    return (torch.stack(spikes), v) if return_v else torch.stack(spikes)
