"""Readers for the event-camera file formats of the neuromorphic datasets (docs/data.md, "Event file formats").

Every reader returns a numpy structured array of dtype :data:`EVENT_DTYPE` with fields
``t`` (int64, microseconds), ``x``, ``y`` (uint16) and ``p`` (uint8, 0 = OFF, 1 = ON), in the order
the events were recorded. Timestamps are *not* sorted: recordings can contain small backward jumps, and
keeping the recorded order lets a caller see them (the frame code handles unsorted input, see
``frames.py``).

All decoding is vectorised numpy; Python loops only run over header lines and packets, never events.
A truncated, corrupt or wrong-format file raises :class:`EventFileError` naming the file, the byte
offset and what was expected there.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "EVENT_DTYPE",
    "EventFileError",
    "read_atis_bin",
    "read_aedat2",
    "read_aedat3",
    "read_aedat4",
    "read_gesture_labels",
    "split_gesture_recording",
    "read_events",
]

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
"""The dtype every reader returns: t (int64 us), x, y (uint16), p (uint8, 0 or 1)."""

GESTURE_LABEL_DTYPE = np.dtype([("label", "<i8"), ("start", "<i8"), ("end", "<i8")])

PathLike = str | os.PathLike


class EventFileError(ValueError):
    """An event file (or a label file beside it) is truncated, corrupt or not in the expected format."""

    def __init__(self, path: PathLike, offset: int | None, expected: str, found: str | None = None):
        self.path = str(path)
        self.offset = offset
        self.expected = expected
        self.found = found
        where = f"at byte offset {offset}" if offset is not None else "at an unknown byte offset"
        msg = f"{self.path}: {where}: expected {expected}"
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)

    def __reduce__(self) -> tuple:
        # rebuilt from its fields, so that it crosses a process pool (the frame cache build) intact
        return type(self), (self.path, self.offset, self.expected, self.found)


def _make_events(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.empty(len(t), dtype=EVENT_DTYPE)
    out["t"] = t
    out["x"] = x
    out["y"] = y
    out["p"] = p
    return out


def _read_bytes(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _check_size(path: PathLike, x: np.ndarray, y: np.ndarray, size: tuple[int, int] | None,
                offsets: np.ndarray | int | None) -> None:
    """Raise EventFileError at the first event whose (y, x) lies outside ``size=(H, W)``."""
    if size is None or len(x) == 0:
        return
    h, w = size
    bad = (x >= w) | (y >= h)
    if bad.any():
        i = int(np.argmax(bad))
        off = offsets if offsets is None or isinstance(offsets, int) else int(offsets[i])
        raise EventFileError(path, off, f"coordinates inside the {h}x{w} sensor (y < {h}, x < {w})",
                             f"event x={int(x[i])}, y={int(y[i])}")


# --------------------------------------------------------------------------- ATIS .bin (N-MNIST, N-Caltech101)

ATIS_OVERFLOW_Y = 240
ATIS_OVERFLOW_STEP = 1 << 13


def read_atis_bin(path: PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an ATIS ``.bin`` file (N-MNIST, N-Caltech101): 5-byte big-endian words, no header.

    Word layout: x (bits 39-32), y (31-24), polarity (bit 23), timestamp in us (22-0). A word with
    y == 240 marks a timestamp overflow: it is dropped and 2**13 is added to every later timestamp
    (tonic's convention, docs/data.md). Coordinates are 8-bit, so any byte value decodes; pass
    ``size=(H, W)`` to reject events outside the sensor (N-MNIST: 34x34). An empty file gives 0 events.
    """
    data = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    n_words, rest = divmod(len(data), 5)
    if rest:
        raise EventFileError(path, 5 * n_words, "a whole number of 5-byte ATIS words",
                             f"a partial word of {rest} byte(s) at the end (file truncated?)")
    words = data.reshape(n_words, 5)
    y = words[:, 1]
    t = ((words[:, 2] & 0x7F).astype(np.int64) << 16) | (words[:, 3].astype(np.int64) << 8) | words[:, 4]
    overflow = y == ATIS_OVERFLOW_Y
    if overflow.any():
        t += np.cumsum(overflow) * ATIS_OVERFLOW_STEP
        keep = ~overflow
        words, t = words[keep], t[keep]
        offsets = np.flatnonzero(keep) * 5
    else:
        offsets = np.arange(n_words) * 5 if size is not None else None
    x, y = words[:, 0], words[:, 1]
    if size is not None:
        _check_size(path, x, y, size, offsets)
    return _make_events(t, x, y, words[:, 2] >> 7)


# --------------------------------------------------------------------------- AEDAT 2.0 (CIFAR10-DVS original)

def _skip_hash_header(path: PathLike, data: bytes, magic: bytes) -> int:
    """Return the offset just after the ``#`` header lines; check the first line starts with ``magic``."""
    if not data.startswith(magic):
        raise EventFileError(path, 0, f"the header line {magic.decode()!r}", repr(data[: len(magic)]))
    pos = 0
    while pos < len(data) and data[pos] == 0x23:  # '#'
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise EventFileError(path, pos, "a header line ending with a newline", "end of file")
        pos = nl + 1
    return pos


def read_aedat2(path: PathLike, orientation: str = "spikingjelly") -> np.ndarray:
    """Read an AEDAT 2.0 file (original CIFAR10-DVS release, 128x128 DVS).

    ASCII ``#`` header lines (the first ``#!AER-DAT2.0``), then big-endian uint32 address and uint32
    timestamp pairs; address bit 0 is polarity, bits 1-7 x, bits 8-14 y. Higher address bits (jAER's
    special-event flags) are ignored, as SpikingJelly does, so coordinates are always in 0..127.
    ``orientation="spikingjelly"`` (default, used by published accuracies) maps to x' = 127 - y,
    y' = 127 - x, p' = 1 - p; ``"raw"`` keeps the decoded bits. Timestamps are uint32 us (no wrap handling).
    """
    if orientation not in ("spikingjelly", "raw"):
        raise ValueError(f"orientation must be 'spikingjelly' or 'raw', got {orientation!r}")
    data = _read_bytes(path)
    start = _skip_hash_header(path, data, b"#!AER-DAT2")
    n_pairs, rest = divmod(len(data) - start, 8)
    if rest:
        raise EventFileError(path, start + 8 * n_pairs, "whole 8-byte (address, timestamp) pairs",
                             f"{rest} trailing byte(s) (file truncated?)")
    pairs = np.frombuffer(data, dtype=">u4", count=2 * n_pairs, offset=start).reshape(n_pairs, 2)
    addr = pairs[:, 0]
    p = (addr & 1).astype(np.uint8)
    x = ((addr >> 1) & 0x7F).astype(np.uint16)
    y = ((addr >> 8) & 0x7F).astype(np.uint16)
    t = pairs[:, 1].astype(np.int64)
    if orientation == "spikingjelly":
        x, y, p = 127 - y, 127 - x, 1 - p
    return _make_events(t, x, y, p)


# --------------------------------------------------------------------------- AEDAT 3.1 (DVS128 Gesture)

_AEDAT3_END = b"#!END-HEADER\r\n"
_PACKET_HEADER = struct.Struct("<hhiiiiii")
POLARITY_EVENT = 1


def read_aedat3(path: PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an AEDAT 3.1 file (DVS128 Gesture): only polarity packets (eventType 1), valid events only.

    After the header (ending ``#!END-HEADER\\r\\n``) come packets of a 28-byte little-endian header and
    ``eventCapacity * eventSize`` bytes of events; the first ``eventNumber`` are decoded. Polarity
    event: uint32 data (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and int32 timestamp;
    full time = (eventTSOverflow << 31) | timestamp. Other packet types are skipped. Pass
    ``size=(H, W)`` (DVS128: 128x128) to reject events outside the sensor.
    """
    data = _read_bytes(path)
    if not data.startswith(b"#!AER-DAT3"):
        raise EventFileError(path, 0, "the header line '#!AER-DAT3.1'", repr(data[:10]))
    end = data.find(_AEDAT3_END)
    if end < 0:
        raise EventFileError(path, len(data), "the end-of-header line '#!END-HEADER\\r\\n'", "end of file")
    pos = end + len(_AEDAT3_END)
    n = len(data)
    chunks: list[tuple[int, int, int]] = []  # (body offset, event count, tsOverflow)
    while pos < n:
        if pos + 28 > n:
            raise EventFileError(path, pos, "a 28-byte packet header", f"{n - pos} byte(s) before end of file")
        etype, _src, esize, tsoff, tsovf, capacity, number, valid = _PACKET_HEADER.unpack_from(data, pos)
        if esize <= 0 or capacity < 0 or not 0 <= number <= capacity or not 0 <= valid <= number:
            raise EventFileError(path, pos, "a packet header with eventSize > 0 and "
                                 "0 <= eventValid <= eventNumber <= eventCapacity",
                                 f"eventSize={esize}, eventCapacity={capacity}, eventNumber={number}, "
                                 f"eventValid={valid}")
        body = pos + 28
        if body + capacity * esize > n:
            raise EventFileError(path, body, f"{capacity * esize} bytes of packet events "
                                 f"({capacity} x {esize})", f"{n - body} byte(s) before end of file")
        if etype == POLARITY_EVENT:
            if esize != 8 or tsoff != 4:
                raise EventFileError(path, pos, "a polarity packet with eventSize 8 and eventTSOffset 4",
                                     f"eventSize={esize}, eventTSOffset={tsoff}")
            if tsovf < 0:
                raise EventFileError(path, pos + 12, "a non-negative eventTSOverflow", str(tsovf))
            if number:
                chunks.append((body, number, tsovf))
        pos = body + capacity * esize
    if not chunks:
        return np.empty(0, dtype=EVENT_DTYPE)
    counts = np.array([c[1] for c in chunks], dtype=np.int64)
    raw = np.frombuffer(b"".join(data[o : o + 8 * k] for o, k, _ in chunks), dtype="<u4").reshape(-1, 2)
    word = raw[:, 0]
    ts = raw[:, 1].view("<i4").astype(np.int64)
    ovf = np.repeat(np.array([c[2] for c in chunks], dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # index of each packet's first event
    ev_off = np.repeat(np.array([c[0] for c in chunks], dtype=np.int64) - 8 * first, counts)
    ev_off += 8 * np.arange(len(word))  # byte offset of every event, for error messages
    if (ts < 0).any():
        i = int(np.argmax(ts < 0))
        raise EventFileError(path, int(ev_off[i]) + 4, "a non-negative int32 event timestamp", str(int(ts[i])))
    keep = (word & 1).astype(bool)
    word, ts, ovf, ev_off = word[keep], ts[keep], ovf[keep], ev_off[keep]
    x = ((word >> 17) & 0x7FFF).astype(np.uint16)
    y = ((word >> 2) & 0x7FFF).astype(np.uint16)
    p = ((word >> 1) & 1).astype(np.uint8)
    _check_size(path, x, y, size, ev_off)
    return _make_events((ovf << 31) | ts, x, y, p)


# --------------------------------------------------------------------------- AEDAT 4.0 (CIFAR10-DVS via tonic)

_AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"


def _aedat4_layout(path: PathLike, data: bytes) -> list[tuple[int, int]]:
    """Walk the AEDAT 4 framing (IOHeader + packet headers) and return (offset, stream id) per packet."""
    if not data.startswith(_AEDAT4_MAGIC):
        raise EventFileError(path, 0, "the magic line '#!AER-DAT4.0\\r\\n'", repr(data[:14]))
    n = len(data)
    if n < 18:
        raise EventFileError(path, 14, "a 4-byte IOHeader length", f"{n - 14} byte(s) before end of file")
    (hsize,) = struct.unpack_from("<I", data, 14)
    hstart = 18
    if hstart + hsize > n or hsize < 12:
        raise EventFileError(path, 14, "an IOHeader length of at least 12 bytes inside the file",
                             f"{hsize} (file has {n - hstart} bytes left)")
    # minimal flatbuffer parse of IOHeader: root table -> vtable -> field 1 (int64 dataTablePosition)
    (root,) = struct.unpack_from("<I", data, hstart)
    table = hstart + root
    if root + 4 > hsize:
        raise EventFileError(path, hstart, "an IOHeader flatbuffer root offset inside the header", str(root))
    (soff,) = struct.unpack_from("<i", data, table)
    vtable = table - soff
    if not hstart <= vtable <= hstart + hsize - 4:
        raise EventFileError(path, table, "an IOHeader vtable inside the header", f"vtable at {vtable}")
    vlen, _tlen = struct.unpack_from("<HH", data, vtable)
    table_pos = -1
    if vlen >= 8 and vtable + 8 <= hstart + hsize:
        (foff,) = struct.unpack_from("<H", data, vtable + 6)
        if foff:
            if table + foff + 8 > hstart + hsize:
                raise EventFileError(path, vtable + 6, "an IOHeader dataTablePosition field inside the header",
                                     f"field offset {foff}")
            (table_pos,) = struct.unpack_from("<q", data, table + foff)
    if vlen >= 10 and vtable + 10 <= hstart + hsize:  # field 2: infoNode, an XML string (must be UTF-8)
        (foff,) = struct.unpack_from("<H", data, vtable + 8)
        if foff and table + foff + 4 <= hstart + hsize:
            sref = table + foff
            sstart = sref + struct.unpack_from("<I", data, sref)[0]
            if sstart + 4 > hstart + hsize:
                raise EventFileError(path, sref, "an IOHeader infoNode string inside the header", f"at {sstart}")
            (slen,) = struct.unpack_from("<I", data, sstart)
            if sstart + 4 + slen > hstart + hsize:
                raise EventFileError(path, sstart, "an IOHeader infoNode string inside the header",
                                     f"length {slen}")
            try:
                data[sstart + 4 : sstart + 4 + slen].decode("utf-8")
            except UnicodeDecodeError as err:
                raise EventFileError(path, sstart + 4 + err.start, "UTF-8 XML text in the IOHeader infoNode",
                                     "an invalid byte") from None
    pos = hstart + hsize
    stop = table_pos if table_pos >= 0 else n
    if not pos <= stop <= n:
        raise EventFileError(path, pos, f"the data table position inside the file (between {pos} and {n})",
                             str(table_pos))
    packets = []
    while pos < stop:
        if pos + 8 > stop:
            raise EventFileError(path, pos, "an 8-byte packet header (stream id, size)",
                                 f"{stop - pos} byte(s) before the end of the packet area")
        sid, psize = struct.unpack_from("<iI", data, pos)
        if pos + 8 + psize > stop:
            raise EventFileError(path, pos, f"a packet of {psize} bytes inside the file",
                                 f"{stop - pos - 8} byte(s) left")
        packets.append((pos, sid))
        pos += 8 + psize
    return packets


def read_aedat4(path: PathLike) -> np.ndarray:
    """Read the polarity events of an AEDAT 4.0 file (newer CIFAR10-DVS release) with the ``aedat`` package.

    The framing is checked here first (so truncation is reported with its byte offset); decoding is done
    by ``aedat`` (imported lazily: ``pip install aedat``). The events stream with the lowest id is read;
    coordinates outside the stream's width x height are rejected. The trailing data table (an index written
    after the last packet) is not needed, so a file cut inside it still decodes all its events.
    """
    try:
        import aedat
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("read_aedat4 needs the 'aedat' package to decode AEDAT 4 files: "
                          "pip install aedat (or pip install 'spikformers[events]')") from err
    data = _read_bytes(path)
    packets = _aedat4_layout(path, data)
    try:
        decoder = aedat.Decoder(str(path))
        streams = decoder.id_to_stream()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # aedat raises RuntimeError, or pyo3's PanicException (a BaseException)
        raise EventFileError(path, 18, "an IOHeader that the aedat package can decode",
                             f"{type(err).__name__}: {err}") from None
    event_ids = [sid for sid, s in streams.items() if s.get("type") == "events"]
    if not event_ids:
        raise EventFileError(path, 18, "an 'events' stream declared in the IOHeader",
                             f"streams {sorted(streams.items())}")
    sid = min(event_ids)
    width, height = streams[sid].get("width"), streams[sid].get("height")
    parts: list[np.ndarray] = []
    done = 0  # packets decoded so far; the next one is packets[done] in the framing walk
    try:
        for packet in decoder:
            if packet.get("stream_id") == sid and "events" in packet:
                ev = packet["events"]
                part = np.empty(len(ev), dtype=EVENT_DTYPE)
                if len(ev) and int(ev["t"].max()) > np.iinfo(np.int64).max:
                    raise EventFileError(path, packets[done][0] if done < len(packets) else None,
                                         "timestamps below 2**63 us", f"t={int(ev['t'].max())}")
                part["t"] = ev["t"]
                part["x"] = ev["x"]
                part["y"] = ev["y"]
                part["p"] = ev["on"]
                if width is not None and height is not None and len(part):
                    off = packets[done][0] if done < len(packets) else None
                    _check_size(path, part["x"], part["y"], (height, width), off)
                parts.append(part)
            done += 1
    except EventFileError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        off = packets[done][0] if done < len(packets) else None
        raise EventFileError(path, off, "a packet that the aedat package can decode",
                             f"{type(err).__name__}: {err}") from None
    if not parts:
        return np.empty(0, dtype=EVENT_DTYPE)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- DVS Gesture labels

def read_gesture_labels(path: PathLike) -> np.ndarray:
    """Read a DVS Gesture ``<file>_labels.csv`` (class,startTime_usec,endTime_usec; classes 1..11).

    Returns a structured array (label, start, end) with labels shifted to 0..10; a malformed line, a class
    outside 1..11 or end < start raises EventFileError with the byte offset of the line.
    """
    data = _read_bytes(path)
    rows: list[tuple[int, int, int]] = []
    offset = 0
    for i, line in enumerate(data.splitlines(keepends=True)):
        text = line.strip()
        here = offset
        offset += len(line)
        if not text:
            continue
        if i == 0 and not text[:1].isdigit():
            if text.replace(b" ", b"").lower() != b"class,starttime_usec,endtime_usec":
                raise EventFileError(path, here, "the header 'class,startTime_usec,endTime_usec'",
                                     repr(text[:60]))
            continue
        fields = text.split(b",")
        try:
            cls, start, end = (int(f) for f in fields)
        except ValueError:
            raise EventFileError(path, here, "three integers 'class,start,end'", repr(text[:60])) from None
        if not 1 <= cls <= 11 or start < 0 or end < start:
            raise EventFileError(path, here, "class in 1..11 and 0 <= start <= end", repr(text[:60]))
        rows.append((cls - 1, start, end))
    return np.array(rows, dtype=GESTURE_LABEL_DTYPE)


def split_gesture_recording(events: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Cut a DVS Gesture recording into samples: the events with start <= t < end for each label row.

    Works on unsorted timestamps (boolean masks, recorded order kept inside each sample).
    """
    t = events["t"]
    out = []
    for row in labels:
        mask = (t >= row["start"]) & (t < row["end"])
        out.append((events[mask], int(row["label"])))
    return out


# --------------------------------------------------------------------------- dispatch

READERS = {
    ".bin": read_atis_bin,
    ".aedat4": read_aedat4,
}


def read_events(path: PathLike, **kwargs) -> np.ndarray:
    """Read any supported file, choosing the reader by extension and (for ``.aedat``) the header version."""
    suffix = Path(path).suffix.lower()
    if suffix in READERS:
        return READERS[suffix](path, **kwargs)
    if suffix == ".aedat":
        with open(path, "rb") as f:
            head = f.read(12)
        if head.startswith(b"#!AER-DAT2"):
            return read_aedat2(path, **kwargs)
        if head.startswith(b"#!AER-DAT3"):
            return read_aedat3(path, **kwargs)
        if head.startswith(b"#!AER-DAT4"):
            return read_aedat4(path, **kwargs)
        raise EventFileError(path, 0, "an '#!AER-DAT<version>' header line (2.x, 3.x or 4.0)", repr(head))
    raise ValueError(f"{path}: no reader for files ending in {suffix!r} (known: .bin, .aedat, .aedat4)")
