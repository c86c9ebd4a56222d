"""Which of two paths that compute the same numbers runs, decided for the CPU the code runs on.

An event-driven kernel pays per non-zero input, a dense one per element; where they break even depends on the CPU
(vector width, caches, threads) and on the shape, so no fixed threshold suits every machine. The first time a shape
class meets a choice, a short timed trial settles it: both paths run on synthetic inputs of that shape, the fast path
at two densities, and the density up to which it beats the dense path (less a safety margin) is kept. Binary choices
(two dense implementations of one product) are timed side by side. Results are cached in a JSON file beside the
built kernels, keyed by the CPU model, its instruction-set flags, the thread count and the kernel library build, so
each machine calibrates once (one line on the ``spikformers`` logger says so).

Switches: ``kernel_config(calibrate=False)`` uses the fixed defaults the callers pass instead (the test suite does,
for deterministic paths); ``SPIKFORMERS_RECALIBRATE=1`` ignores the cached file and measures again (then rewrites
it); :func:`recalibrate` does the same from code. :func:`using_calibration` installs another :class:`Calibration`
for a block (the tests use one with a fake timer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock between processes
    fcntl = None  # type: ignore[assignment]

import torch

from . import cpp
from .config import get_kernel_config

__all__ = ["Calibration", "break_even", "current", "faster", "recalibrate", "using_calibration"]

log = logging.getLogger("spikformers")

Timer = Callable[[Callable[[], object]], float]
# a trial at density r: (dense path, fast path), each a no-argument call on inputs built for that density
Trial = Callable[[float], tuple[Callable[[], object], Callable[[], object]]]

TRIAL_RATES = (0.05, 0.3)  # densities the fast path is timed at; its cost is close to linear in the density
MARGIN = 0.9  # the kept threshold is this fraction of the measured break-even: near it, the dense path wins ties
MAX_RATE = 0.6  # extrapolated break-evens are capped here


def best_time(fn: Callable[[], object], repeats: int = 2) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after one untimed warm-up call, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_key() -> dict[str, Any]:
    """What a calibration holds for: CPU model, instruction-set flags, torch's thread count, the kernel build."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        import platform

        model = platform.processor()
    library = cpp.library_path.name if cpp.available() and cpp.library_path is not None else "none"
    return {"cpu": model, "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12],
            "threads": torch.get_num_threads(), "library": library, "torch": torch.__version__}


def break_even_from(dense: float, fast: tuple[float, float], rates: tuple[float, float] = TRIAL_RATES,
                    margin: float = MARGIN, cap: float = MAX_RATE) -> float:
    """The density up to which the fast path beats the dense one, from the dense time and the fast path's times at
    ``rates`` (a straight line through them), times ``margin``; 0 when the fast path loses already at the lower
    density."""
    (r0, r1), (t0, t1) = rates, fast
    if t0 >= dense:
        return 0.0
    slope = (t1 - t0) / (r1 - r0)
    at = cap if slope <= 0 else r0 + (dense - t0) / slope
    return round(margin * min(max(at, r0), cap), 4)


class Calibration:
    """Decisions per shape class, measured once per machine and cached in ``path`` (None: in memory only).

    ``timer(fn)`` gives the seconds a call takes (default :func:`best_time`); ``fresh`` ignores what ``path`` holds.
    """

    def __init__(self, path: Path | None, timer: Timer | None = None, fresh: bool = False) -> None:
        self.path = path
        self.timer = timer or best_time
        self._lock = threading.Lock()
        self.entries: dict[str, Any] = {} if fresh or path is None else self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: measure again and rewrite it
        return data.get("entries", {}) if isinstance(data, dict) and data.get("machine") == machine_key() else {}

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"machine": machine_key(), "entries": self.entries}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)  # atomic: a second process reads the old file or the new one
        except OSError as exc:  # a read-only cache costs a calibration per process, nothing else
            log.debug("spikformers: calibration not cached (%s)", exc)

    @contextmanager
    def _machine_lock(self) -> Iterator[None]:
        """Hold the cache's lock file against other processes (POSIX; elsewhere, or unwritable, no lock): processes
        that start together then time each shape once, and all take the first one's decision, so two runs of one
        configuration (a run and its resumption, say) take the same paths and give the same numbers."""
        handle = None
        if self.path is not None and fcntl is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 - held for the block
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                handle = None
        try:
            yield
        finally:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

    def _settle(self, key: str, measure: Callable[[], Any]) -> Any:
        hit = self.entries.get(key)
        if hit is not None:
            return hit
        with self._lock, self._machine_lock():
            if key not in self.entries and self.path is not None:  # another process may have timed it meanwhile
                self.entries = {**self._read(self.path), **self.entries}  # a decision taken here stays
            if key not in self.entries:
                if not self.entries:
                    where = self.path if self.path is not None else "memory"
                    log.info("spikformers: timing event-driven vs dense kernels for this CPU, once per shape "
                             "(cached in %s)", where)
                # the trial's random inputs come from a forked generator: a run that times a shape and one that
                # reads the decision from the cache go on with the same random numbers
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    self.entries[key] = measure()
                self._write()
            return self.entries[key]

    def break_even(self, key: str, trial: Trial) -> float:
        """The density up to which ``trial``'s fast path beats its dense one, for shape class ``key``."""
        def measure() -> float:
            calls = [trial(r) for r in TRIAL_RATES]  # the dense path is timed on the first density's inputs
            fast = tuple(self.timer(fast_call) for _, fast_call in calls)
            return break_even_from(self.timer(calls[0][0]), fast)  # type: ignore[arg-type]

        return float(self._settle(key, measure))

    def faster(self, key: str, trial: Callable[[], tuple[Callable[[], object], Callable[[], object]]]) -> bool:
        """Whether the first of ``trial()``'s two calls takes less time than the second (shape class ``key``)."""
        def measure() -> bool:
            first, second = trial()
            return self.timer(first) < self.timer(second)

        return bool(self._settle(key, measure))


def _default() -> Calibration:
    name = hashlib.sha256(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    fresh = os.environ.get("SPIKFORMERS_RECALIBRATE", "") not in ("", "0")
    return Calibration(cpp.cache_dir() / f"calibration_{name}.json", fresh=fresh)


_by_threads: dict[int, Calibration] = {}  # the machine's calibration per thread count, built on first use
_override: list[Calibration] = []  # installed by using_calibration, innermost last


def current() -> Calibration:
    """The calibration in use: the one :func:`using_calibration` installed, else this machine's for torch's
    current thread count (read from its cache file on first use)."""
    if _override:
        return _override[-1]
    threads = torch.get_num_threads()
    if threads not in _by_threads:
        _by_threads[threads] = _default()
    return _by_threads[threads]


@contextmanager
def using_calibration(calibration: Calibration) -> Iterator[Calibration]:
    """Within this block, decisions come from ``calibration``; the previous one is in use again after it."""
    _override.append(calibration)
    try:
        yield calibration
    finally:
        _override.remove(calibration)


def recalibrate() -> Calibration:
    """Forget this machine's decisions (in memory and its cache file) at the current thread count; they are
    measured again as shapes come, and the file rewritten."""
    fresh = _by_threads[torch.get_num_threads()] = _default()
    fresh.entries = {}
    return fresh


def break_even(key: str, trial: Trial, fixed: float) -> float:
    """The density up to which the fast path of shape class ``key`` runs: calibrated, or ``fixed`` when the
    ``calibrate`` switch of :mod:`.config` is off."""
    if not get_kernel_config().calibrate:
        return fixed
    try:
        return current().break_even(key, trial)
    except (RuntimeError, MemoryError) as exc:  # a trial that cannot run here leaves the fixed rule, uncached
        log.warning("spikformers: timing %s failed (%s); using the fixed threshold %s", key, exc, fixed)
        return fixed


def faster(key: str, trial: Callable[[], tuple[Callable[[], object], Callable[[], object]]], fixed: bool) -> bool:
    """Whether the first of ``trial()``'s two equal paths is the faster for shape class ``key`` (``fixed`` with
    calibration off)."""
    if not get_kernel_config().calibrate:
        return fixed
    try:
        return current().faster(key, trial)
    except (RuntimeError, MemoryError) as exc:
        log.warning("spikformers: timing %s failed (%s); using the default path", key, exc)
        return fixed
