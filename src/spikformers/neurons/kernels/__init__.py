"""Multi-step neuron kernels. ``lif_multistep`` picks the fastest path for the tensor's device.

Paths (all give the same spikes and, to 1e-6, the same gradients as :func:`reference.lif_reference`):
an eager fused autograd function that stores spikes as 1-byte masks and recomputes the membrane in backward.
"""

from __future__ import annotations

import torch

from .fused import lif_fused
from .reference import lif_reference, ternary_lif_reference, ternary_reference

__all__ = ["lif_multistep", "lif_fused", "lif_reference", "ternary_reference", "ternary_lif_reference"]


def lif_multistep(
    x: torch.Tensor,
    tau: float = 2.0,
    v_th: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Run the LIF neuron over ``x: [T, ...]``; ``backend`` is ``"auto"``, ``"fused"`` or ``"reference"``."""
    if backend == "reference":
        return lif_reference(x, tau, v_th, v_reset, alpha, detach_reset)
    if backend in ("auto", "fused"):
        return lif_fused(x, tau, v_th, v_reset, alpha, detach_reset)
    raise ValueError(f"unknown LIF backend {backend!r}; expected 'auto', 'fused' or 'reference'")
