"""Event readers: files written here bit by bit (docs/data.md, "Event file formats") decode back; real recordings
match their known facts (docs/data.md, "Real recordings in the tests"), tonic and the aedat package. The writers
below are also used by the other test_event_* files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from spikformers.data.events import (
    EVENT_DTYPE,
    EventFileError,
    read_aedat2,
    read_aedat3,
    read_aedat4,
    read_atis_bin,
    read_events,
    read_gesture_labels,
    split_gesture_recording,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NMNIST_FILE = DATA / "sample_nmnist.bin"
AEDAT4_FILE = DATA / "sample.aedat4"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real recording {path} is absent (not shipped; docs/data.md, 'Real recordings in the tests')")
    return path


def make_events(n: int, seed: int = 0, w: int = 128, h: int = 128, t_max: int = 10**6, sort: bool = True):
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, t_max, n)) if sort else rng.integers(0, t_max, n)
    ev["x"] = rng.integers(0, w, n)
    ev["y"] = rng.integers(0, h, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


# ----------------------------------------------------------------------------------------------- writers

def atis_bytes(ev: np.ndarray) -> bytes:
    """Encode events (t sorted) as ATIS words, inserting overflow words (y=240) when t needs more than 23 bits."""
    out = bytearray()
    n_ovf = 0
    for e in ev:
        t = int(e["t"])
        need_ovf = max(0, -(-(t - (2**23 - 1)) // 8192))
        while n_ovf < need_ovf:
            out += bytes([0, 240, 0, 0, 0])
            n_ovf += 1
        ts = t - n_ovf * 8192
        assert 0 <= ts < 2**23
        word = (int(e["x"]) << 32) | (int(e["y"]) << 24) | (int(e["p"]) << 23) | ts
        out += word.to_bytes(5, "big")
    return bytes(out)


def aedat2_bytes(x_raw, y_raw, p_raw, t, extra_bits=None) -> bytes:
    """AEDAT 2.0: '#' header lines then big-endian (address, timestamp) pairs; x bits 1-7, y bits 8-14."""
    head = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address\r\n"
    addr = (np.asarray(p_raw, np.uint32) | (np.asarray(x_raw, np.uint32) << 1)
            | (np.asarray(y_raw, np.uint32) << 8))
    if extra_bits is not None:
        addr |= np.asarray(extra_bits, np.uint32) << 15
    pairs = np.stack([addr, np.asarray(t, np.uint32)], axis=1).astype(">u4")
    return head + pairs.tobytes()


AEDAT3_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"


def aedat3_packet(etype: int, body: bytes, esize: int, number: int, tsovf: int = 0, capacity: int | None = None,
                  valid: int | None = None, tsoff: int = 4) -> bytes:
    capacity = number if capacity is None else capacity
    valid = number if valid is None else valid
    return struct.pack("<hhiiiiii", etype, 1, esize, tsoff, tsovf, capacity, number, valid) + body


def polarity_body(x, y, p, ts, valid=None) -> bytes:
    n = len(x)
    valid = np.ones(n, np.uint32) if valid is None else np.asarray(valid, np.uint32)
    word = (valid | (np.asarray(p, np.uint32) << 1) | (np.asarray(y, np.uint32) << 2)
            | (np.asarray(x, np.uint32) << 17))
    return np.stack([word, np.asarray(ts, np.uint32)], axis=1).astype("<u4").tobytes()


def aedat3_bytes(ev: np.ndarray, packet_size: int = 1000, mix_special: bool = True) -> bytes:
    """AEDAT 3.1 with polarity packets of ``packet_size`` events (t may exceed 2**31: uses tsOverflow) and a
    non-polarity packet (type 0 special events, 8 bytes) between packets when ``mix_special``."""
    out = bytearray(AEDAT3_HEADER)
    for i in range(0, len(ev), packet_size):
        part = ev[i:i + packet_size]
        tsovf = int(part["t"][0]) >> 31
        assert (part["t"] >> 31 == tsovf).all(), "one packet must not straddle a tsOverflow step"
        body = polarity_body(part["x"], part["y"], part["p"], part["t"] & 0x7FFFFFFF)
        out += aedat3_packet(1, body, 8, len(part), tsovf)
        if mix_special:
            out += aedat3_packet(0, bytes(range(24)), 8, 3)
            out += aedat3_packet(7, bytes(40), 20, 2)  # other event type with another event size
    return bytes(out)


def gesture_labels_csv(rows) -> str:
    return "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{a},{b}\n" for c, a, b in rows)


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == EVENT_DTYPE
    assert len(a) == len(b["t"])
    for k in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(a[k].astype(np.int64), np.asarray(b[k]).astype(np.int64), err_msg=k)


# ----------------------------------------------------------------------------------------------- ATIS

def test_atis_roundtrip_with_overflow_words(tmp_path):
    ev = make_events(3000, w=34, h=34, t_max=3 * 2**23)  # needs many overflow words
    data = atis_bytes(ev)
    assert data.count(bytes([0, 240])) > 0
    f = tmp_path / "a.bin"
    f.write_bytes(data)
    assert_same(read_atis_bin(f), ev)
    assert_same(read_atis_bin(f, size=(34, 34)), ev)
    assert_same(read_events(f), ev)


def test_atis_overflow_word_adds_8192_to_later_events(tmp_path):
    words = [(1, 2, 1, 100), (0, 240, 0, 0), (3, 4, 0, 50), (0, 240, 1, 7), (5, 6, 1, 10)]
    data = b"".join(((x << 32) | (y << 24) | (p << 23) | t).to_bytes(5, "big") for x, y, p, t in words)
    f = tmp_path / "o.bin"
    f.write_bytes(data)
    ev = read_atis_bin(f)
    assert ev["t"].tolist() == [100, 50 + 8192, 10 + 2 * 8192]
    assert ev["x"].tolist() == [1, 3, 5] and ev["y"].tolist() == [2, 4, 6] and ev["p"].tolist() == [1, 0, 1]


def test_atis_truncated_and_out_of_range(tmp_path):
    f = tmp_path / "t.bin"
    f.write_bytes(atis_bytes(make_events(10, w=34, h=34))[:-2])
    with pytest.raises(EventFileError, match=r"t\.bin: at byte offset 45: expected a whole number of 5-byte"):
        read_atis_bin(f)
    f.write_bytes(bytes([40, 3, 0, 0, 1]))
    with pytest.raises(EventFileError, match="offset 0.*34x34"):
        read_atis_bin(f, size=(34, 34))
    f.write_bytes(b"")
    assert len(read_atis_bin(f)) == 0


def test_atis_real_nmnist_facts():
    ev = read_atis_bin(need(NMNIST_FILE))
    assert len(ev) == 4325
    assert ev["x"].min() >= 0 and ev["x"].max() <= 33 and ev["y"].min() >= 0 and ev["y"].max() <= 33
    assert ev["t"].min() == 654 and ev["t"].max() == 311175
    raw = np.fromfile(NMNIST_FILE, np.uint8).reshape(-1, 5)
    assert len(raw) == 4325 and not (raw[:, 1] == 240).any()  # no overflow words
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}


def test_atis_real_nmnist_matches_tonic():
    tonic_io = pytest.importorskip("tonic.io", reason="tonic not installed: cross-check against its reader skipped")
    ours = read_atis_bin(need(NMNIST_FILE))
    ref = tonic_io.read_mnist_file(str(NMNIST_FILE), dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]))
    assert_same(ours, ref)


# ----------------------------------------------------------------------------------------------- AEDAT 2.0

def test_aedat2_roundtrip_both_orientations(tmp_path):
    rng = np.random.default_rng(1)
    n = 2000
    x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 2**32 - 1, n))
    f = tmp_path / "c.aedat"
    f.write_bytes(aedat2_bytes(x, y, p, t, extra_bits=rng.integers(0, 2, n)))  # high bits are ignored
    raw = read_aedat2(f, orientation="raw")
    assert_same(raw, dict(t=t, x=x, y=y, p=p))
    sj = read_aedat2(f)
    assert_same(sj, dict(t=t, x=127 - y, y=127 - x, p=1 - p))
    assert_same(read_events(f), sj)


def test_aedat2_errors(tmp_path):
    f = tmp_path / "bad.aedat"
    good = aedat2_bytes([1, 2], [3, 4], [0, 1], [10, 20])
    f.write_bytes(good[:-3])
    with pytest.raises(EventFileError, match=r"bad\.aedat: at byte offset \d+: expected whole 8-byte"):
        read_aedat2(f)
    f.write_bytes(b"#!AER-DAT3.1\r\n" + good[14:])
    with pytest.raises(EventFileError, match="offset 0: expected the header line '#!AER-DAT2'"):
        read_aedat2(f)
    f.write_bytes(b"#!AER-DAT2.0 no newline")
    with pytest.raises(EventFileError, match="ending with a newline"):
        read_aedat2(f)
    with pytest.raises(ValueError, match="orientation"):
        read_aedat2(f, orientation="flipped")
    f.write_bytes(b"#!AER-DAT2.0\r\n")
    assert len(read_aedat2(f)) == 0


def test_aedat2_matches_tonic_dvs128(tmp_path):
    tonic_io = pytest.importorskip("tonic.io", reason="tonic not installed: cross-check against its reader skipped")
    rng = np.random.default_rng(2)
    x, y, p, t = rng.integers(0, 128, 500), rng.integers(0, 128, 500), rng.integers(0, 2, 500), np.arange(500) * 7
    f = tmp_path / "c.aedat"
    f.write_bytes(aedat2_bytes(x, y, p, t))
    # tonic 1.7's read_dvs_128 fails unpacking its own header reader's result, so use its lower-level parts
    version, start, _ = tonic_io.read_aedat_header_from_file(str(f))
    ref = tonic_io.get_aer_events_from_file(str(f), version, start)
    addr = ref["address"].astype(np.int64)
    ours = read_aedat2(f, orientation="raw")
    np.testing.assert_array_equal(ours["t"], ref["timeStamp"])
    np.testing.assert_array_equal(ours["p"], addr & 1)
    np.testing.assert_array_equal(ours["x"], (addr >> 1) & 0x7F)
    np.testing.assert_array_equal(ours["y"], (addr >> 8) & 0x7F)
    assert_same(ours, dict(t=t, x=x, y=y, p=p))


# ----------------------------------------------------------------------------------------------- AEDAT 3.1

def test_aedat3_multipacket_with_overflow_and_special_packets(tmp_path):
    ev = make_events(5000, seed=3, t_max=10**6)
    ev["t"][2500:] += 3 << 31  # nonzero tsOverflow for the second half (packets of 500 do not straddle)
    f = tmp_path / "user01_led.aedat"
    f.write_bytes(aedat3_bytes(ev, packet_size=500))
    out = read_aedat3(f)
    assert_same(out, ev)
    assert out["t"].max() > 2**32
    assert_same(read_aedat3(f, size=(128, 128)), ev)
    assert_same(read_events(f), ev)


def test_aedat3_invalid_events_skipped_and_capacity(tmp_path):
    body = polarity_body([1, 2, 3], [4, 5, 6], [1, 0, 1], [10, 20, 30], valid=[1, 0, 1])
    spare = bytes(16)  # capacity 5, only 3 events present
    f = tmp_path / "g.aedat"
    f.write_bytes(AEDAT3_HEADER + aedat3_packet(1, body + spare, 8, 3, tsovf=1, capacity=5, valid=2))
    ev = read_aedat3(f)
    assert ev["x"].tolist() == [1, 3] and ev["y"].tolist() == [4, 6] and ev["p"].tolist() == [1, 1]
    assert ev["t"].tolist() == [(1 << 31) | 10, (1 << 31) | 30]


def test_aedat3_errors(tmp_path):
    ev = make_events(100, seed=4)
    good = aedat3_bytes(ev, packet_size=50, mix_special=False)
    f = tmp_path / "g.aedat"
    f.write_bytes(good[:-5])
    with pytest.raises(EventFileError, match=r"g\.aedat: at byte offset \d+: expected 400 bytes of packet events"):
        read_aedat3(f)
    f.write_bytes(good + b"\x01\x00")
    with pytest.raises(EventFileError, match=f"offset {len(good)}: expected a 28-byte packet header"):
        read_aedat3(f)
    f.write_bytes(AEDAT3_HEADER[:-5])
    with pytest.raises(EventFileError, match="END-HEADER"):
        read_aedat3(f)
    f.write_bytes(AEDAT3_HEADER + aedat3_packet(1, bytes(24), 12, 2))
    with pytest.raises(EventFileError, match="eventSize 8"):
        read_aedat3(f)
    f.write_bytes(AEDAT3_HEADER + aedat3_packet(1, polarity_body([200], [1], [1], [5]), 8, 1))
    with pytest.raises(EventFileError, match="128x128"):
        read_aedat3(f, size=(128, 128))
    f.write_bytes(AEDAT3_HEADER)
    assert len(read_aedat3(f)) == 0


# ----------------------------------------------------------------------------------------------- AEDAT 4

def test_aedat4_real_file_facts_and_aedat_package():
    aedat = pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
    ev = read_aedat4(need(AEDAT4_FILE))
    assert len(ev) == 111954
    assert ev["x"].max() < 320 and ev["y"].max() < 240
    decoder = aedat.Decoder(str(AEDAT4_FILE))
    ref = np.concatenate([pk["events"] for pk in decoder if "events" in pk])
    np.testing.assert_array_equal(ev["t"], ref["t"].astype(np.int64))
    np.testing.assert_array_equal(ev["x"], ref["x"])
    np.testing.assert_array_equal(ev["y"], ref["y"])
    np.testing.assert_array_equal(ev["p"], ref["on"].astype(np.uint8))


def test_aedat4_matches_tonic():
    tonic_io = pytest.importorskip("tonic.io", reason="tonic not installed: cross-check against its reader skipped")
    pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
    ev = read_aedat4(need(AEDAT4_FILE))
    ref = tonic_io.read_aedat4(str(AEDAT4_FILE))
    np.testing.assert_array_equal(ev["t"], ref["t"].astype(np.int64))
    np.testing.assert_array_equal(ev["x"], ref["x"])
    np.testing.assert_array_equal(ev["p"], ref["on"].astype(np.uint8))


def test_aedat4_truncated_and_wrong_format(tmp_path):
    pytest.importorskip("aedat", reason="aedat package not installed (pip install aedat)")
    data = need(AEDAT4_FILE).read_bytes()
    f = tmp_path / "cut.aedat4"
    for cut in (5, 16, 200, 5000, 500_000, 945_000):
        f.write_bytes(data[:cut])
        with pytest.raises(EventFileError, match=r"cut\.aedat4: at byte offset \d+: expected"):
            read_aedat4(f)
    f.write_bytes(b"#!AER-DAT3.1\r\n" + data[14:])
    with pytest.raises(EventFileError, match="offset 0"):
        read_aedat4(f)
    # a cut inside the trailing data table (an index after the last packet) loses no events: accepted
    f.write_bytes(data[:945_250])
    assert len(read_aedat4(f)) == 111954


# ----------------------------------------------------------------------------------------------- dispatch, labels

def test_read_events_dispatch_errors(tmp_path):
    f = tmp_path / "x.aedat"
    f.write_bytes(b"garbage file")
    with pytest.raises(EventFileError, match="offset 0"):
        read_events(f)
    with pytest.raises(ValueError, match="no reader"):
        read_events(tmp_path / "x.txt")


def test_gesture_labels_and_split(tmp_path):
    f = tmp_path / "user01_led_labels.csv"
    f.write_text(gesture_labels_csv([(1, 100, 200), (11, 200, 400)]))
    labels = read_gesture_labels(f)
    assert labels["label"].tolist() == [0, 10] and labels["start"].tolist() == [100, 200]
    ev = make_events(500, t_max=500)
    ev = ev[::-1].copy()  # unsorted: windows still work
    parts = split_gesture_recording(ev, labels)
    assert [lab for _, lab in parts] == [0, 10]
    assert ((parts[0][0]["t"] >= 100) & (parts[0][0]["t"] < 200)).all()
    assert len(parts[0][0]) == ((ev["t"] >= 100) & (ev["t"] < 200)).sum()
    assert len(parts[1][0]) == ((ev["t"] >= 200) & (ev["t"] < 400)).sum()
    f.write_text("class,startTime_usec,endTime_usec\n12,0,5\n")
    with pytest.raises(EventFileError, match="offset 34: expected class in 1..11"):
        read_gesture_labels(f)
    f.write_text("class,startTime_usec,endTime_usec\n1,zero,5\n")
    with pytest.raises(EventFileError, match="three integers"):
        read_gesture_labels(f)
