"""On-disk cache of event frames: convert every sample once (in parallel), then epochs read ``.npy`` frames.

Layout: ``<cache_root>/<name>_T<T>_<split_by>_<H>x<W>_<hash>/<sample key>.npy`` plus ``meta.json``; the hash
covers the reader options and the cache format version, so changing any of T, split mode, size or reader
options gives a separate folder. Files are written to a temporary name and renamed (atomic on POSIX), so
an interrupted build never leaves a half-written frame file; pickle is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .frames import SPLIT_MODES, events_to_frames

__all__ = ["CacheTask", "FrameCache", "build_frame_cache", "save_npy_atomic"]

CACHE_FORMAT_VERSION = 1


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as ``.npy`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _compact(frames: np.ndarray) -> np.ndarray:
    """Store counts as uint16 when they fit (they nearly always do), else uint32."""
    top = int(frames.max()) if frames.size else 0
    return frames.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


@dataclass
class CacheTask:
    """One source file to convert: its reader, and one output key per sample cut from it.

    ``windows`` is None when the whole file is one sample (``keys`` has one entry), else one
    ``(start, end)`` time window [start, end) in us per key (DVS Gesture).
    """

    source: str
    reader: Callable[..., np.ndarray]
    keys: list[str]
    reader_kwargs: dict = field(default_factory=dict)
    windows: list[tuple[int, int]] | None = None


class FrameCache:
    """A folder of ``.npy`` frame files for one (dataset, T, split mode, size, reader options) combination."""

    def __init__(self, root: str | os.PathLike, name: str, T: int, split_by: str, size: tuple[int, int],
                 options: dict | None = None):
        if split_by not in SPLIT_MODES:
            raise ValueError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")
        self.T, self.split_by, self.size = int(T), split_by, (int(size[0]), int(size[1]))
        self.meta = {"format": CACHE_FORMAT_VERSION, "name": name, "T": self.T, "split_by": split_by,
                     "size": list(self.size), "options": options or {}}
        digest = hashlib.sha1(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:8]
        h, w = self.size
        self.dir = Path(root) / f"{name}_T{self.T}_{split_by}_{h}x{w}_{digest}"

    def path(self, key: str) -> Path:
        """Path of the frame file for one sample key."""
        return self.dir / f"{key}.npy"

    def has(self, key: str) -> bool:
        """Whether the frames of ``key`` are already cached."""
        return self.path(key).is_file()

    def load(self, key: str) -> np.ndarray:
        """Load the cached frames of ``key`` (integer counts ``[T, 2, H, W]``)."""
        arr = np.load(self.path(key), allow_pickle=False)
        if arr.shape != (self.T, 2, *self.size):
            raise ValueError(f"{self.path(key)}: cached frames have shape {arr.shape}, "
                             f"expected {(self.T, 2, *self.size)}")
        return arr

    def save(self, key: str, frames: np.ndarray) -> None:
        """Store the frames of ``key`` atomically."""
        self.prepare()
        save_npy_atomic(self.path(key), _compact(frames))

    def prepare(self) -> None:
        """Create the folder and its ``meta.json`` (describing what the frames are) if missing."""
        if not (self.dir / "meta.json").is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".meta.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps(self.meta, indent=1, sort_keys=True))
            os.replace(tmp, self.dir / "meta.json")

    def convert(self, task: CacheTask) -> int:
        """Read one source file and write the frames of every sample in it; returns the samples written."""
        events = task.reader(task.source, **task.reader_kwargs)
        if task.windows is None:
            pieces = [events]
        else:
            t = events["t"]
            pieces = [events[(t >= a) & (t < b)] for a, b in task.windows]
        for key, piece in zip(task.keys, pieces, strict=True):
            self.save(key, events_to_frames(piece, self.T, self.size, self.split_by, dtype=np.int64))
        return len(pieces)


def _run_tasks(cache: FrameCache, tasks: list[CacheTask]) -> int:
    return sum(cache.convert(task) for task in tasks)


def build_frame_cache(cache: FrameCache, tasks: Sequence[CacheTask], workers: int | None = None,
                      progress: bool = True, desc: str | None = None) -> int:
    """Convert every task that has a missing output, in parallel processes, with a tqdm progress bar.

    ``workers``: number of processes (None = min(8, CPU count); 0 or 1 = in this process). Returns the
    number of samples written. An unreadable source file stops the build with its EventFileError.
    """
    todo = [task for task in tasks if not all(cache.has(k) for k in task.keys)]
    if not todo:
        return 0
    cache.prepare()
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=desc or f"caching frames in {cache.dir.name}", unit="file",
               disable=not progress)
    written = 0
    try:
        if workers <= 1 or len(todo) == 1:
            for task in todo:
                written += cache.convert(task)
                bar.update(1)
        else:
            # a few chunks per worker: amortises process round trips, keeps the progress bar moving
            n_chunks = min(len(todo), 4 * workers)
            chunks = [todo[i::n_chunks] for i in range(n_chunks)]
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {pool.submit(_run_tasks, cache, chunk): len(chunk) for chunk in chunks}
                try:
                    for fut in as_completed(futures):
                        written += fut.result()
                        bar.update(futures[fut])
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return written
