"""Membrane carried between calls, only inside an explicit :func:`carry_membrane` context (T in chunks).

Outside the context every neuron is stateless (the whole sequence in one call). Inside it, each neuron call
starts from the membrane its previous chunk left and stores its final membrane; the store is keyed by the
neuron module and the order of its calls within a chunk, and it is dropped when the context exits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["MembraneStore", "carry_membrane", "current_store"]

_local = threading.local()


class MembraneStore:
    """Final membranes ``[...]`` per (neuron, call index); :meth:`next_chunk` restarts the call counters."""

    def __init__(self) -> None:
        self.membranes: dict[tuple[int, int], torch.Tensor] = {}
        self._calls: dict[int, int] = {}
        self._keep: dict[int, nn.Module] = {}  # keep ids valid while the store lives

    def next_chunk(self) -> None:
        """Call before each chunk's forward pass."""
        self._calls.clear()

    def key(self, module: nn.Module) -> tuple[int, int]:
        """The key of ``module``'s next call in the current chunk."""
        n = self._calls.get(id(module), 0)
        self._calls[id(module)] = n + 1
        self._keep[id(module)] = module
        return id(module), n

    def get(self, key: tuple[int, int]) -> torch.Tensor | None:
        return self.membranes.get(key)

    def put(self, key: tuple[int, int], v: torch.Tensor) -> None:
        self.membranes[key] = v


def current_store() -> MembraneStore | None:
    """The active store of this thread, or None (the stateless default)."""
    return getattr(_local, "store", None)


@contextmanager
def carry_membrane() -> Iterator[MembraneStore]:
    """Within this context neurons carry their membrane from one call to the next; cleared on exit."""
    if current_store() is not None:
        raise RuntimeError("carry_membrane() contexts cannot be nested")
    store = MembraneStore()
    _local.store = store
    try:
        yield store
    finally:
        _local.store = None
        store.membranes.clear()
        store._keep.clear()
