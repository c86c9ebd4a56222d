"""Shared definitions of the fused neuron kernels: parameters, kinds and formats of the state saved for backward.

Saved-state formats (``save``), chosen by :func:`choose_save` from a neuron's ``saved`` option (one of
:data:`SAVED_CHOICES`; each format but ``"code"`` has the name of the choice that asks for it):

| save        | bytes/element/step | content                                               | surrogate error   |
|-------------|--------------------|-------------------------------------------------------|-------------------|
| "q24"       | 3                  | surrogate, 23-bit fixed point, + spike/reset bit      | <= 1.2e-7 alpha/4 |
| "q16"       | 2                  | surrogate, 15-bit fixed point, + spike/reset bit      | <= 3.1e-5 alpha/4 |
| "exact"     | dtype size         | membrane before firing; surrogate recomputed          | exact             |
| "code"      | 1                  | ternary "guo": straight-through mask bit, reset bit   | exact             |
| "recompute" | 0 new (the input)  | nothing: backward re-runs the charge from the input   | exact             |

``"recompute"`` keeps a reference to the input instead of new state: free when something else holds the input
anyway, 4 bytes per element and step when nothing does. Backward recomputes the membrane with the forward's own
arithmetic, so gradients equal ``"exact"``'s bit for bit. :data:`SAVED_IDS` gives each format the number
``csrc/neurons.cpp`` and the Triton kernels know it by (there ``"exact"`` is ``SAVE_H``, ``"recompute"``
``SAVE_X``).

The spike bit is all the reset needs and the surrogate value all the charge needs, so nothing else is kept.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

KIND_IDS = {"lif": 0, "ternary_lif": 1, "ternary_guo": 2}
SAVED_CHOICES = ("auto", "exact", "recompute", "q24", "q16")  # a neuron's ``saved`` option
SAVED_IDS = {"none": 0, "code": 1, "q16": 2, "q24": 3, "exact": 4, "recompute": 5}  # formats ("none": inference)
Q_MAX = {"q16": (1 << 15) - 1, "q24": (1 << 23) - 1}


class NeuronParams(NamedTuple):
    """Hyper-parameters of one neuron call (unused ones keep their defaults)."""

    tau: float = 2.0
    v_th: float = 1.0
    v_reset: float = 0.0
    alpha: float = 4.0
    decay: float = 0.25
    detach_reset: bool = True


def surrogate_scale(kind: str, alpha: float) -> float:
    """Upper bound of the saved surrogate value: ``alpha/4`` for one sigmoid, ``alpha/2`` for the ternary pair."""
    return alpha / 4.0 if kind == "lif" else alpha / 2.0


def choose_save(kind: str, dtype: torch.dtype, detach_reset: bool, saved: str = "auto") -> str:
    """Pick the saved-state format: the smallest one whose gradient stays within 1e-6 of the reference loop.

    ``saved="auto"``: ``"q24"`` for float32 (and lower), ``"exact"`` for float64 or when the reset is not
    detached (its gradient needs the membrane itself); ``"exact"`` keeps the membrane; ``"recompute"`` saves no
    new state (the input is kept and the membrane rebuilt in backward); ``"q16"`` trades gradient precision
    (about 3e-5) for 2 bytes per element and step. The ternary "guo" form always saves ``"code"``.
    """
    if saved not in SAVED_CHOICES:
        raise ValueError(f"saved must be one of {SAVED_CHOICES}, got {saved!r}")
    if kind == "ternary_guo":
        return "code"
    if saved == "recompute":
        return "recompute"
    if saved == "exact" or (kind == "lif" and not detach_reset):
        return "exact"
    if saved == "auto":
        return "exact" if dtype == torch.float64 else "q24"
    return saved


def saved_shape(save: str, x: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the saved-state tensor for input ``x`` in format ``save``."""
    if save == "exact":
        return tuple(x.shape), x.dtype
    if save == "code":
        return (x.numel(),), torch.uint8
    return (3 if save == "q24" else 2, x.numel()), torch.uint8


def triton_importable() -> bool:
    """True when ``import triton`` works (checked without importing the Triton kernels themselves)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no Triton
        return False
    return True


def triton_interpret() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
