"""Fuzz every reader with random and mutated bytes: only EventFileError may come out, never another exception,
a hang (hypothesis deadline) or silently invalid events (bad polarity, negative time, out-of-sensor pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikformers.data.events import (
    EVENT_DTYPE,
    EventFileError,
    read_aedat2,
    read_aedat3,
    read_aedat4,
    read_atis_bin,
    read_events,
    read_gesture_labels,
)
from test_event_readers import (
    AEDAT3_HEADER,
    AEDAT4_FILE,
    aedat2_bytes,
    aedat3_bytes,
    atis_bytes,
    gesture_labels_csv,
    make_events,
)

FUZZ = settings(max_examples=120, deadline=3000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_ev = make_events(60, seed=11, w=34, h=34, t_max=3 * 2**23)
SEEDS = {
    "atis": atis_bytes(_ev),
    "aedat2": aedat2_bytes(_ev["x"], _ev["y"], _ev["p"], _ev["t"]),
    "aedat3": aedat3_bytes(make_events(60, seed=12), packet_size=20),
    "labels": gesture_labels_csv([(1, 0, 100), (5, 100, 900), (11, 900, 2000)]).encode(),
}

# (reader, size the output must respect or None, seed bytes)
READERS = {
    "atis": (read_atis_bin, None),
    "atis_34": (lambda f: read_atis_bin(f, size=(34, 34)), (34, 34)),
    "aedat2_sj": (read_aedat2, (128, 128)),
    "aedat2_raw": (lambda f: read_aedat2(f, orientation="raw"), (128, 128)),
    "aedat3": (read_aedat3, (2**15, 2**15)),
    "aedat3_128": (lambda f: read_aedat3(f, size=(128, 128)), (128, 128)),
    "events_aedat": (read_events, None),
}
SEED_OF = {"atis": "atis", "atis_34": "atis", "aedat2_sj": "aedat2", "aedat2_raw": "aedat2",
           "aedat3": "aedat3", "aedat3_128": "aedat3", "events_aedat": "aedat3"}
SUFFIX = {"events_aedat": ".aedat"}


def check_output(ev: np.ndarray, size) -> None:
    assert ev.dtype == EVENT_DTYPE
    if len(ev):
        assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
        assert ev["t"].min() >= 0
        if size is not None:
            assert ev["y"].max() < size[0] and ev["x"].max() < size[1]


def run_reader(reader, path: Path, data: bytes, size) -> None:
    path.write_bytes(data)
    try:
        ev = reader(path)
    except EventFileError as err:
        assert str(path) in str(err) and "expected" in str(err)
        return
    check_output(ev, size)


@st.composite
def mutated(draw, seed: bytes):
    """A valid file with byte flips, a truncation and/or an insertion."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(max_size=12))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_fuzz_readers(tmp_path, name, data):
    reader, size = READERS[name]
    seed = SEEDS[SEED_OF[name]]
    magic = seed[:14] if name.startswith(("aedat", "events")) else b""
    raw = data.draw(st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: magic + b),
                              mutated(seed)))
    run_reader(reader, tmp_path / f"f{SUFFIX.get(name, '.bin')}", raw, size)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), mutated(SEEDS["labels"])))
def test_fuzz_gesture_labels(tmp_path, raw):
    f = tmp_path / "x_labels.csv"
    f.write_bytes(raw)
    try:
        labels = read_gesture_labels(f)
    except EventFileError:
        return
    if len(labels):
        assert labels["label"].min() >= 0 and labels["label"].max() <= 10
        assert (labels["end"] >= labels["start"]).all()


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"#!AER-DAT4.0\r\n" + b)))
def test_fuzz_aedat4_random(tmp_path, raw):
    pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
    run_reader(read_aedat4, tmp_path / "f.aedat4", raw, None)


@settings(max_examples=40, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_aedat4_mutated_real_file(tmp_path, data):
    pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
    if not AEDAT4_FILE.is_file():
        pytest.skip(f"real recording {AEDAT4_FILE} is absent (not shipped; see docs/data.md)")
    seed = bytearray(_aedat4_head())
    # mutate the header / first packets, where structure lives, or cut anywhere
    for _ in range(data.draw(st.integers(1, 4))):
        seed[data.draw(st.integers(0, len(seed) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        seed = seed[: data.draw(st.integers(0, len(seed)))]
    run_reader(read_aedat4, tmp_path / "m.aedat4", bytes(seed), None)


_HEAD: list[bytes] = []


def _aedat4_head() -> bytes:
    """The real AEDAT 4 file cut after its first few packets (keeps each example fast)."""
    if not _HEAD:
        import struct

        data = AEDAT4_FILE.read_bytes()
        (hsize,) = struct.unpack_from("<I", data, 14)
        pos = 18 + hsize
        for _ in range(6):
            pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
        head = bytearray(data[:pos])
        struct.pack_into("<q", head, 18 + 24 + 12, -1)  # IOHeader.dataTablePosition = -1: no data table
        _HEAD.append(bytes(head))
    return _HEAD[0]


def test_seed_files_are_valid(tmp_path):
    """The un-mutated seeds decode (so the fuzzing starts from real structure)."""
    for name, (reader, size) in READERS.items():
        f = tmp_path / f"s{SUFFIX.get(name, '.bin')}"
        f.write_bytes(SEEDS[SEED_OF[name]])
        ev = reader(f)
        assert len(ev) == 60, name
        check_output(ev, size)
    assert AEDAT3_HEADER in SEEDS["aedat3"]
    if AEDAT4_FILE.is_file():
        pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
        f = tmp_path / "head.aedat4"
        f.write_bytes(_aedat4_head())
        assert len(read_aedat4(f)) > 0
