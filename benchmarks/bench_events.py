"""Event-data benchmark: reader throughput (events/s) on the real recordings (docs/data.md, "Real recordings in the
tests"; skipped when absent) and on large synthetic files of each format, frame-cache build time, and tonic's
readers on the same files in the same run.

Usage: python benchmarks/bench_events.py [--events 2000000] [--repeat 3] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spikformers.data.events import (
    EVENT_DTYPE,
    CacheTask,
    FrameCache,
    build_frame_cache,
    events_to_frames,
    read_aedat2,
    read_aedat3,
    read_aedat4,
    read_atis_bin,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_events(n: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    """Random events with sorted timestamps (about 1 event per us)."""
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, n, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n)
    return ev


def write_atis(path: Path, ev: np.ndarray) -> None:
    """ATIS words, vectorised; t stays below 2**23 by wrapping through overflow words every 2**13 us."""
    t = ev["t"] % (1 << 23)  # timestamps reused modulo; fine for throughput
    words = np.zeros((len(ev), 5), np.uint8)
    words[:, 0], words[:, 1] = ev["x"], ev["y"]
    words[:, 2] = (ev["p"].astype(np.uint32) << 7) | (t >> 16)
    words[:, 3], words[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    path.write_bytes(words.tobytes())


def write_aedat2(path: Path, ev: np.ndarray) -> None:
    addr = ev["p"].astype(np.uint32) | (ev["x"].astype(np.uint32) << 1) | (ev["y"].astype(np.uint32) << 8)
    body = np.stack([addr, ev["t"].astype(np.uint32)], axis=1).astype(">u4").tobytes()
    path.write_bytes(b"#!AER-DAT2.0\r\n# synthetic\r\n" + body)


def write_aedat3(path: Path, ev: np.ndarray, per_packet: int = 4096) -> None:
    """AEDAT 3.1 with polarity packets of ``per_packet`` events (about DVS Gesture's packet sizes)."""
    out = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"]
    word = (1 | (ev["p"].astype(np.uint32) << 1) | (ev["y"].astype(np.uint32) << 2)
            | (ev["x"].astype(np.uint32) << 17))
    raw = np.stack([word, ev["t"].astype(np.uint32) & 0x7FFFFFFF], axis=1).astype("<u4")
    for i in range(0, len(ev), per_packet):
        part = raw[i:i + per_packet]
        out.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, len(part), len(part), len(part)) + part.tobytes())
    path.write_bytes(b"".join(out))


def timed(fn, repeat: int) -> tuple[float, object]:
    """Best wall time over ``repeat`` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def tonic_readers():
    """tonic's reader for each format (None where tonic lacks one or is not installed)."""
    try:
        import tonic.io as tio
    except ImportError:
        return None
    mnist_dtype = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])

    def dvs128(path):
        # tonic's read_dvs_128 body (tonic 1.7's own function fails unpacking its header reader's 3-tuple)
        version, start, _ = tio.read_aedat_header_from_file(str(path))
        ev = tio.get_aer_events_from_file(str(path), version, start)
        addr, t = ev["address"], ev["timeStamp"]
        return tio.make_structured_array((addr >> 8) & 0x7F, (addr >> 1) & 0x7F, t, addr & 1)

    def ibm(path):
        # tonic's read_dvs_ibm body (same header issue); note it keeps every packet type and invalid events
        version, start, _ = tio.read_aedat_header_from_file(str(path))
        ev = tio.get_aer_events_from_file(str(path), version, start)
        addr, t = ev["address"], ev["timeStamp"]
        return tio.make_structured_array((addr >> 17) & 0x1FFF, (addr >> 2) & 0x1FFF, t, (addr >> 1) & 1)

    return {
        "atis": lambda p: tio.read_mnist_file(str(p), dtype=mnist_dtype),
        "aedat2": dvs128,
        "aedat3": ibm,
        "aedat4": lambda p: tio.read_aedat4(str(p)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events per synthetic file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--cache-files", type=int, default=200, help="files in the frame-cache build test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    tonic = tonic_readers()
    if tonic is None:
        print("tonic is not installed: the side-by-side comparison is skipped (pip install tonic)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        if (DATA / "sample_nmnist.bin").is_file():
            files.append(("real N-MNIST", "atis", DATA / "sample_nmnist.bin", read_atis_bin))
        else:
            print(f"{DATA / 'sample_nmnist.bin'} absent: real N-MNIST row skipped")
        if (DATA / "sample.aedat4").is_file():
            files.append(("real AEDAT4", "aedat4", DATA / "sample.aedat4", read_aedat4))
        else:
            print(f"{DATA / 'sample.aedat4'} absent: real AEDAT4 row skipped")
        ev = synthetic_events(args.events, 128, 128)
        for name, fmt, writer, reader in [
            ("synthetic ATIS", "atis", write_atis, read_atis_bin),
            ("synthetic AEDAT2", "aedat2", write_aedat2, lambda p: read_aedat2(p, orientation="raw")),
            ("synthetic AEDAT3.1", "aedat3", write_aedat3, read_aedat3),
        ]:
            path = tmp / f"big.{fmt}"
            writer(path, ev)
            files.append((name, fmt, path, reader))
        for name, fmt, path, reader in files:
            secs, out = timed(lambda r=reader, p=path: r(p), args.repeat)
            row = {"file": name, "format": fmt, "events": len(out), "bytes": path.stat().st_size,
                   "seconds": secs, "events_per_s": len(out) / secs}
            if tonic is not None:
                t_secs, t_out = timed(lambda p=path, f=fmt: tonic[f](p), args.repeat)
                row.update(tonic_seconds=t_secs, tonic_events=len(t_out), speedup_vs_tonic=t_secs / secs)
            rows.append(row)

        # frames from the large synthetic file
        ev_big = read_atis_bin(tmp / "big.atis")
        f_secs, _ = timed(lambda: events_to_frames(ev_big, 16, (128, 128), "number"), args.repeat)
        ft_secs, _ = timed(lambda: events_to_frames(ev_big, 16, (128, 128), "time"), args.repeat)

        # frame-cache build: many CIFAR10-DVS-sized AEDAT 2 files (~ 200k events each, like the real ones)
        src = tmp / "src"
        src.mkdir()
        per_file = 200_000
        for i in range(args.cache_files):
            write_aedat2(src / f"s{i:05d}.aedat", synthetic_events(per_file, 128, 128, seed=i))
        tasks = [CacheTask(str(p), read_aedat2, [p.stem]) for p in sorted(src.glob("*.aedat"))]
        cache_stats = {}
        for workers in sorted({1, args.workers}):
            cache = FrameCache(tmp / f"cache{workers}", "bench", 16, "number", (128, 128))
            t0 = time.perf_counter()
            build_frame_cache(cache, tasks, workers=workers, progress=False)
            cache_stats[workers] = time.perf_counter() - t0
        cache = FrameCache(tmp / f"cache{args.workers}", "bench", 16, "number", (128, 128))
        load_secs, _ = timed(lambda: [cache.load(t.keys[0]) for t in tasks], 1)

    print(f"\n{'file':<20} {'events':>10} {'MB':>7} {'ours ms':>9} {'Mev/s':>8} {'tonic ms':>9} {'speedup':>8}")
    for r in rows:
        tonic_ms = f"{1e3 * r['tonic_seconds']:9.1f}" if "tonic_seconds" in r else f"{'-':>9}"
        ratio = f"{r['speedup_vs_tonic']:7.1f}x" if "speedup_vs_tonic" in r else f"{'-':>8}"
        print(f"{r['file']:<20} {r['events']:>10} {r['bytes'] / 1e6:>7.2f} {1e3 * r['seconds']:>9.1f} "
              f"{r['events_per_s'] / 1e6:>8.1f} {tonic_ms} {ratio}")
    n_ev = len(ev_big)
    print(f"\nevents_to_frames T=16 128x128, {n_ev} events: number {1e3 * f_secs:.1f} ms "
          f"({n_ev / f_secs / 1e6:.0f} Mev/s), time {1e3 * ft_secs:.1f} ms ({n_ev / ft_secs / 1e6:.0f} Mev/s)")
    for workers, secs in cache_stats.items():
        print(f"frame-cache build: {args.cache_files} files x {per_file} events, {workers} worker(s): {secs:.2f} s "
              f"({args.cache_files / secs:.1f} files/s)")
    print(f"reading the cached frames back: {1e3 * load_secs / args.cache_files:.2f} ms per sample")
    result = {"readers": rows, "frames_number_s": f_secs, "frames_time_s": ft_secs,
              "cache_build_s": {str(k): v for k, v in cache_stats.items()}, "cache_files": args.cache_files,
              "cache_events_per_file": per_file, "cache_load_s_per_sample": load_secs / args.cache_files,
              "tonic": tonic is not None, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
