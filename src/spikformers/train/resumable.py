"""Training epochs that can start part-way, for resuming from a state saved in the middle of an epoch.

An epoch's sample order comes from the loader's generator (or, under ``torchrun``, from the seed and the epoch
number of ``DistributedSampler``). :class:`ResumableSampler` wraps the training sampler: the resumed run restores
the generator as it was at the start of the epoch, so the same order is drawn again, and the sampler yields it
from position ``skip`` on; the skipped samples are never loaded.

Augmentation randomness: without loader workers it comes from the global RNG, which the resume state restores as
it was at the saved step. With workers, torch seeds each worker once per epoch (loader base seed + worker id) and
hands batches to workers in turn, so after skipping k batches each batch would land on another worker at another
point of its RNG stream. :class:`PositionSeeded` therefore reseeds Python, NumPy and torch before every batch
from the loader's base seed and the batch's position in the epoch: a batch gets the same augmentation whichever
worker loads it, with any number of workers, whether or not the epoch started part-way.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


class ResumableSampler(Sampler[Any]):
    """Wrap a training sampler so that its next epoch can start after its first ``skip`` indices.

    The wrapped sampler draws its order exactly as unwrapped (lazily, when the first index is asked for, after
    the loader drew its base seed), and runs to its end, so the generator advances by the same amount whether
    or not indices were skipped. With ``positions`` it yields ``(position in the epoch, index)`` pairs for
    :class:`PositionSeeded`.
    """

    def __init__(self, sampler: Sampler[int], positions: bool = False) -> None:
        self.sampler, self.positions, self._skip = sampler, positions, 0

    def skip_next_epoch(self, skip: int) -> None:
        """Leave out the first ``skip`` indices of the next iteration only (the consumed part of an epoch)."""
        self._skip = skip

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped sampler (``DistributedSampler`` reshuffles per epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        for pos, index in enumerate(self.sampler):
            if pos >= skip:
                yield (pos, index) if self.positions else index

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def seed_for_position(base_seed: int, position: int) -> None:
    """Seed Python, NumPy and torch from a loader's base seed and a position in the epoch."""
    words = np.random.SeedSequence([base_seed, position]).generate_state(4)
    seed = int(words[0]) << 32 | int(words[1])
    random.seed(seed)
    np.random.seed(words[2:])
    torch.manual_seed(seed)


class PositionSeeded(Dataset):
    """A map-style dataset read with ``(position, index)`` keys from :class:`ResumableSampler`.

    Inside a loader worker, every batch first reseeds Python, NumPy and torch from the loader's base seed and the
    position of the batch's first sample (:func:`seed_for_position`), then loads its samples as usual. In the
    main process (no workers) nothing is reseeded.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _seed(self, position: int) -> None:
        info = get_worker_info()
        if info is not None:  # a worker's seed is the loader's base seed plus the worker id
            seed_for_position(info.seed - info.id, position)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        position, index = key
        self._seed(position)
        return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        self._seed(keys[0][0])
        indices = [index for _, index in keys]
        batched = getattr(self.dataset, "__getitems__", None)
        return batched(indices) if batched is not None else [self.dataset[i] for i in indices]
