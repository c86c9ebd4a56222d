"""events_to_frames against a straightforward per-event Python loop, for both split modes, plus edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from spikformers.data.events import EVENT_DTYPE, events_to_frames
from spikformers.data.events.frames import slice_indices


def make_events(n: int, seed: int = 0, w: int = 20, h: int = 15, t_max: int = 10_000, sort: bool = True):
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    t = rng.integers(0, t_max, n)
    ev["t"] = np.sort(t) if sort else t
    ev["x"] = rng.integers(0, w, n)
    ev["y"] = rng.integers(0, h, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def loop_frames(ev, T, h, w, split_by):
    """Reference: the rules written out one event at a time."""
    out = np.zeros((T, 2, h, w), dtype=np.int64)
    n = len(ev)
    if n == 0:
        return out
    if split_by == "number":
        per = n // T
        for j in range(n):
            i = T - 1 if per == 0 else min(j // per, T - 1)
            out[i, ev["p"][j], ev["y"][j], ev["x"][j]] += 1
    else:
        t0 = min(int(v) for v in ev["t"])
        t1 = max(int(v) for v in ev["t"])
        span = t1 - t0 + 1
        for j in range(n):
            t = int(ev["t"][j])
            # slice i covers [t0 + i*span/T, t0 + (i+1)*span/T)
            i = next(k for k in range(T) if t0 + k * span / T <= t < t0 + (k + 1) * span / T)
            out[i, ev["p"][j], ev["y"][j], ev["x"][j]] += 1
    return out


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("n,T,seed,sort", [(1000, 16, 0, True), (997, 7, 1, True), (5, 8, 2, True),
                                           (1, 4, 3, True), (300, 10, 4, False), (64, 16, 5, True)])
def test_frames_match_loop(split_by, n, T, seed, sort):
    ev = make_events(n, seed=seed, sort=sort)
    got = events_to_frames(ev, T, (15, 20), split_by)
    assert got.shape == (T, 2, 15, 20) and got.dtype == np.float32
    np.testing.assert_array_equal(got, loop_frames(ev, T, 15, 20, split_by))
    assert got.sum() == n


def test_number_split_convention():
    ev = make_events(10)
    idx = slice_indices(ev, 3, "number")  # floor(10/3) = 3: [0,3) [3,6) [6,10)
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    few = make_events(3)
    assert slice_indices(few, 5, "number").tolist() == [4, 4, 4]  # fewer events than T: all in the last slice


def test_time_split_boundaries():
    ev = np.zeros(5, dtype=EVENT_DTYPE)
    ev["t"] = [100, 149, 150, 199, 100]  # span = 100, T = 2: [100, 150) and [150, 200)
    assert slice_indices(ev, 2, "time").tolist() == [0, 0, 1, 1, 0]
    ev["t"] = 7  # all at one time: slice 0
    assert slice_indices(ev, 4, "time").tolist() == [0] * 5
    big = np.zeros(2, dtype=EVENT_DTYPE)
    big["t"] = [0, 2**62]  # spans beyond 2**62 / T us take a float64 path (ends still exact)
    assert slice_indices(big, 4, "time").tolist() == [0, 3]


def test_time_split_ignores_order():
    ev = make_events(500, seed=7, sort=False)
    perm = np.random.default_rng(0).permutation(500)
    a = events_to_frames(ev, 8, (15, 20), "time")
    b = events_to_frames(ev[perm], 8, (15, 20), "time")
    np.testing.assert_array_equal(a, b)


def test_empty_and_errors():
    empty = np.zeros(0, dtype=EVENT_DTYPE)
    for mode in ("number", "time"):
        z = events_to_frames(empty, 4, (3, 5), mode)
        assert z.shape == (4, 2, 3, 5) and not z.any()
    ev = make_events(10, w=20, h=15)
    with pytest.raises(ValueError, match="outside the 10x10 frame"):
        events_to_frames(ev, 2, (10, 10))
    with pytest.raises(ValueError, match="split_by"):
        events_to_frames(ev, 2, (15, 20), split_by="count")
    with pytest.raises(ValueError, match="T must be"):
        events_to_frames(ev, 0, (15, 20))
    ev["p"][0] = 2
    with pytest.raises(ValueError, match="polarity"):
        events_to_frames(ev, 2, (15, 20))


def test_int_dtype_and_channels():
    ev = np.zeros(2, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"] = [1, 2], [0, 1], [0, 1]
    f = events_to_frames(ev, 1, (2, 3), dtype=np.int32)
    assert f.dtype == np.int32
    assert f[0, 0, 0, 1] == 1 and f[0, 1, 1, 2] == 1 and f.sum() == 2  # channel 0 = OFF, 1 = ON
