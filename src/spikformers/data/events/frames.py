"""Integrate events into ``[T, 2, H, W]`` count frames (docs/data.md, "Frames"), vectorised with ``np.bincount``."""

from __future__ import annotations

import numpy as np

__all__ = ["events_to_frames", "slice_indices"]

SPLIT_MODES = ("number", "time")


def slice_indices(events: np.ndarray, T: int, split_by: str = "number") -> np.ndarray:
    """Return, for every event, the index (0..T-1) of the time slice it falls in.

    ``number`` (SpikingJelly's convention): with N events and n = N // T, slice i holds the events at
    positions [i*n, (i+1)*n) in recorded order and the last slice also takes the remainder; so with
    N < T every event lands in the last slice and slices 0..T-2 are empty.

    ``time``: with t0 = min(t), t1 = max(t) and span = t1 - t0 + 1, slice i holds the events with
    t0 + i*span/T <= t < t0 + (i+1)*span/T, i.e. index = floor((t - t0) * T / span) in exact integer
    arithmetic. The T half-open windows have equal length and cover [t0, t1], so every event is counted
    and the last event lands in slice T-1. Each event is placed by its own timestamp, so unsorted input
    needs no sorting; when all events share one timestamp they all land in slice 0. (Unlike SpikingJelly,
    whose window is (t_last - t_first) // T from the first and last events in recorded order.)
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    n_events = len(events)
    if split_by == "number":
        n = n_events // T
        if n == 0:
            return np.full(n_events, T - 1, dtype=np.int64)
        return np.minimum(np.arange(n_events, dtype=np.int64) // n, T - 1)
    if split_by == "time":
        if n_events == 0:
            return np.zeros(0, dtype=np.int64)
        t = events["t"].astype(np.int64)
        t0 = int(t.min())
        span = int(t.max()) - t0 + 1
        if span * T < 2**62:
            return (t - t0) * T // span
        # spans beyond 2**62 / T us (centuries) would overflow int64: float64, exact up to rounding
        return np.minimum(np.floor((t - t0).astype(np.float64) * (T / span)).astype(np.int64), T - 1)
    raise ValueError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")


def events_to_frames(events: np.ndarray, T: int, size: tuple[int, int], split_by: str = "number",
                     dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Count events per (slice, polarity, y, x) into an array ``[T, 2, H, W]`` (channel 0 = OFF, 1 = ON).

    ``events`` is a structured array with fields t, x, y, p (as the readers return); slices follow
    :func:`slice_indices`. An empty sample gives all-zero frames; with fewer events than T some slices
    are empty. Events outside ``size=(H, W)`` or with p not in {0, 1} raise ValueError.
    """
    h, w = int(size[0]), int(size[1])
    out_len = T * 2 * h * w
    if len(events) == 0:
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        return np.zeros((T, 2, h, w), dtype=dtype)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    if x.min() < 0 or y.min() < 0 or x.max() >= w or y.max() >= h:
        raise ValueError(f"event coordinates outside the {h}x{w} frame: x in {x.min()}..{x.max()}, "
                         f"y in {y.min()}..{y.max()}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"polarity must be 0 or 1, found values in {p.min()}..{p.max()}")
    idx = slice_indices(events, T, split_by)
    flat = ((idx * 2 + p) * h + y) * w + x
    counts = np.bincount(flat, minlength=out_len)
    return counts.reshape(T, 2, h, w).astype(dtype, copy=False)
