"""Helpers shared by the tests: real digits at any size, and a forward hook that records activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 real digits as ``[N, 1, size, size]`` in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False), torch.tensor(d.target)


def record(module: torch.nn.Module, store: dict, key: str, inputs: bool = False) -> torch.utils.hooks.RemovableHandle:
    """Forward hook saving a module's output (or first input) under ``store[key]`` as a list."""

    def hook(mod, args, out):  # type: ignore[no-untyped-def]
        store.setdefault(key, []).append((args[0] if inputs else out).detach().clone())

    return module.register_forward_hook(hook)
