"""Self-check of the compiled neuron kernels against the reference loops, once per kernel variant and process.

A kernel that compiles but computes the wrong thing (a flipped spike, a zero gradient) does not crash: training
goes on, learns less, and nobody notices. So before the first launch of each Triton variant the dispatcher runs
that variant on a small input (T = 4, 300 or 320 elements per step, membranes that cross the threshold, a random
output gradient in [-1, 1]) and compares it with the reference loop on the same device: spikes exactly, the final
membrane and the input gradient within a tolerance fit for the dtype and the saved-state format
(:func:`tolerance`). The outcome is kept per :class:`KernelKey` for the life of the process. A mismatch, or an
exception (a compile or launch error), gives one :class:`KernelCheckWarning` naming the kernel, its key and what
differed; that call and every later one with the same key take the eager torch path (:mod:`.eager`), which gives
the reference's numbers, slower.

The key is what selects a compiled variant: device, compute dtype, neuron kind, the saved-state format
(``"none"`` at inference), whether the reset is detached, whether a membrane is passed in / written out, and how
Triton specialises the launch (T and N equal to 1, divisible by 16, or neither; the input's address divisible by
16 or not). bf16 / fp16 inputs compute in float32 and share its key. The check runs with fixed, non-default
neuron parameters (:data:`CHECK_PARAMS`), so a kernel that reads the wrong parameter fails it.

Where it applies: every Triton launch, which in normal use means CUDA tensors (on a CPU the dispatcher picks
Triton only for CPU tensors under ``TRITON_INTERPRET=1``, Triton's interpreter, as the test suite does; the same
check runs there). The C++ CPU kernels are not checked per call; ``spikformers doctor`` checks them.
``SPIKFORMERS_KERNEL_CHECK=0`` in the environment, or ``kernel_config(kernel_check=False)`` (:mod:`.config`),
skips the check.

Independently of the check, a call whose indices do not fit the kernels' 32-bit index arithmetic (``t * N`` and
``planes * T * N`` in ``int32``, see :func:`index_overflows`) takes the eager path, with one warning per key.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from types import ModuleType
from typing import NamedTuple

import torch
from torch.autograd.graph import saved_tensors_hooks

from . import eager
from .common import KIND_IDS, Q_MAX, NeuronParams, surrogate_scale
from .config import get_kernel_config
from .node import NeuronFunction
from .reference import lif_reference, ternary_lif_reference, ternary_reference

ENV = "SPIKFORMERS_KERNEL_CHECK"
_TRITON_MODULE = f"{__package__}.triton"


class KernelCheckWarning(RuntimeWarning):
    """A compiled neuron kernel failed its self-check (or cannot take the input): the eager path is used."""


class KernelKey(NamedTuple):
    """What selects one compiled variant of a neuron kernel; the self-check's outcome is kept per key."""

    backend: str  # "triton", "cpp" or "eager"
    device: str  # "cuda:0", "cpu"
    dtype: str  # compute dtype, "float32" or "float64"
    kind: str  # "lif", "ternary_lif", "ternary_guo"
    save: str  # saved-state format (see common.py); "none": inference, forward only
    detach_reset: bool
    v_init: bool  # a membrane passed in (inference)
    return_v: bool  # the final membrane written out (inference)
    T: str  # Triton's specialisation of T: "1", "16" (divisible by 16) or "any"
    N: str  # the same for N, the elements per step
    aligned: bool  # the input's address divisible by 16

    def __str__(self) -> str:
        name = {"triton": "Triton", "cpp": "C++"}.get(self.backend, self.backend)
        run = "forward" if self.save == "none" else f"forward+backward, saved {self.save}"
        extra = [f"reset {'detached' if self.detach_reset else 'attached'}"] if self.kind == "lif" else []
        extra += ["v_init"] * self.v_init + ["return_v"] * self.return_v
        extra.append(f"T {self.T}, N {self.N}, {'aligned' if self.aligned else 'unaligned'}")
        return f"{name} {self.kind} kernel ({run}; {', '.join(extra)}; {self.dtype} on {self.device})"


class CheckResult(NamedTuple):
    """Outcome of one self-check: ``ok``, what differed (or "ok"), the largest absolute difference seen (NaN when
    the kernel raised) and the tolerance of the membranes and gradients (see :func:`tolerance`)."""

    ok: bool
    detail: str
    max_diff: float
    tolerance: float


# non-default values: a kernel that reads the wrong parameter fails the check
CHECK_PARAMS = {
    "lif": NeuronParams(tau=1.7, v_th=0.9, v_reset=-0.2, alpha=3.5),
    "ternary_lif": NeuronParams(tau=1.7, v_th=0.9, v_reset=0.0, alpha=3.5),
    "ternary_guo": NeuronParams(v_th=0.9, decay=0.3),
}
CHECK_T = {"1": 1, "16": 16, "any": 4}  # the check's T for each specialisation of T
CHECK_N = {"1": 1, "16": 320, "any": 300}  # and its elements per step for each specialisation of N
INDEX_LIMIT = 2**31  # the Triton kernels compute t * N and planes * T * N in int32

_lock = threading.Lock()
_results: dict[KernelKey, CheckResult] = {}
_too_large: set[KernelKey] = set()


def kernel_check_enabled() -> bool:
    """Whether Triton variants are checked before first use: the ``kernel_check`` switch of :mod:`.config` when
    set, else ``$SPIKFORMERS_KERNEL_CHECK`` (default yes; ``0``: no)."""
    switch = get_kernel_config().kernel_check
    if switch is not None:
        return switch
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def results() -> dict[KernelKey, CheckResult]:
    """The self-checks run so far in this process, by key."""
    return dict(_results)


def clear_results() -> None:
    """Forget every self-check outcome (the next call of each variant checks it again)."""
    with _lock:
        _results.clear()
        _too_large.clear()


def _spec(n: int) -> str:
    """How Triton specialises an integer argument: equal to 1, divisible by 16, or neither."""
    return "1" if n == 1 else "16" if n % 16 == 0 else "any"


def make_key(backend: str, x: torch.Tensor, kind: str, p: NeuronParams, save: str, v_init: bool = False,
             return_v: bool = False) -> KernelKey:
    """The key of a call on contiguous ``x: [T, ...]`` (already in its compute dtype)."""
    T = x.shape[0]
    N = x.numel() // T
    return KernelKey(backend, str(x.device), str(x.dtype).removeprefix("torch."), kind, save,
                     bool(p.detach_reset), bool(v_init), bool(return_v), _spec(T), _spec(N), x.data_ptr() % 16 == 0)


def index_overflows(T: int, N: int, save: str) -> bool:
    """Whether a Triton launch over ``[T, N]`` saving ``save`` forms an index past int32: the kernels compute
    ``t * N`` and ``k * T * N`` (k = 1, 2 for the q24 planes) in 32 bits while N itself fits in 32 bits."""
    planes = {"q24": 3, "q16": 2}.get(save, 1)
    return N < INDEX_LIMIT and max((T - 1) * N, (planes - 1) * T * N) >= INDEX_LIMIT


def tolerance(dtype: torch.dtype, kind: str, save: str, alpha: float) -> float:
    """Absolute (and relative) tolerance of the input gradient and the membrane against the reference loop.

    Float rounding (10x the kernels' 1e-6 contract in float32), plus, for the quantised formats, twice one step
    of the saved surrogate: with ``|grad_output| <= 1`` a rounding error of at most half a step per element and
    step adds up to at most half a step in the input gradient, whatever tau and T.
    """
    tol = 1e-5 if dtype != torch.float64 else 1e-9
    if save in Q_MAX:
        tol += 2 * surrogate_scale(kind, alpha) / Q_MAX[save]
    return tol


def run_reference(kind: str, p: NeuronParams, x: torch.Tensor, v0: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and final membrane of the reference loop of ``kind`` with parameters ``p``."""
    if kind == "lif":
        return lif_reference(x, p.tau, p.v_th, p.v_reset, p.alpha, p.detach_reset, v0, True)
    if kind == "ternary_lif":
        return ternary_lif_reference(x, p.tau, p.v_th, p.alpha, v0, True)
    return ternary_reference(x, p.decay, p.v_th, v0, True)


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> tuple[str | None, float]:
    """What differs between ``got`` and ``want`` beyond ``tol`` (absolute + relative), None if nothing; and the
    largest absolute difference (inf where a value is not finite)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{what}: {tuple(got.shape)} {got.dtype}, the reference gives {tuple(want.shape)} {want.dtype}", math.inf
    diff = (got.double() - want.double()).abs()
    bad = ~(diff <= tol + tol * want.double().abs())  # NaN counts as bad
    max_diff = float(diff.nan_to_num(math.inf).max()) if diff.numel() else 0.0
    if not bool(bad.any()):
        return None, max_diff
    return (f"{what} differ from the reference loop at {int(bad.sum())} of {bad.numel()} elements "
            f"(max abs diff {max_diff:.3g}, tolerance {tol:.3g})"), max_diff


def _placed(x: torch.Tensor, aligned: bool) -> torch.Tensor:
    """A copy of ``x``; at an address not divisible by 16 when ``aligned`` is False (Triton compiles apart)."""
    if aligned:
        return x.clone()
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    return buf[1:].view_as(x).copy_(x)


def check_inputs(key: KernelKey) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, NeuronParams]:
    """The check's input ``x: [T, N]`` (many membranes cross the threshold within T steps), initial membrane (when
    ``key.v_init``), output gradient in [-1, 1] and neuron parameters for ``key``; seeded, the global RNG untouched."""
    dtype, device = getattr(torch, key.dtype), torch.device(key.device)
    T, N = CHECK_T[key.T], CHECK_N[key.N]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(T, N, generator=gen, dtype=torch.float64) * 1.5 + 0.5).to(device, dtype)
    v0 = (torch.randn(N, generator=gen, dtype=torch.float64) * 0.5).to(device, dtype) if key.v_init else None
    g = (torch.rand(T, N, generator=gen, dtype=torch.float64) * 2 - 1).to(device, dtype)
    return x, v0, g, CHECK_PARAMS[key.kind]._replace(detach_reset=key.detach_reset)


def check(impl: ModuleType, key: KernelKey) -> CheckResult:
    """Run the kernels of ``impl`` (:mod:`.triton`, :mod:`.cpp` or :mod:`.eager`) for ``key`` on a small input and
    compare with the reference loop on the same device: forward only for ``save == "none"``, else forward and
    backward through the autograd node the library uses. Never raises for the kernel's own errors."""
    x, v0, g, p = check_inputs(key)
    dtype, device, N = x.dtype, x.device, x.shape[1]
    tol = tolerance(dtype, key.kind, key.save, p.alpha)
    # keep the caller's autocast, saved-tensor hooks and torch-function modes out of the check
    with torch.autocast(device.type, enabled=False), saved_tensors_hooks(lambda t: t, lambda t: t), \
            torch._C.DisableTorchFunction():
        xk = _placed(x, key.aligned)
        if key.save == "none":
            with torch.no_grad():
                ref, v_ref = run_reference(key.kind, p, x, v0)
                v_final = torch.empty(N, dtype=dtype, device=device) if key.return_v else None
                try:
                    out, _ = impl.forward(xk, key.kind, p, "none", v0, v_final)
                    diffs = [_compare("spikes", out, ref, 0.0)]
                    if v_final is not None:
                        diffs.append(_compare("final membranes", v_final, v_ref, tol))
                except Exception as exc:  # noqa: BLE001 - any failure of the kernel fails the check
                    return _raised(exc, tol)
        else:
            with torch.enable_grad():
                xr = x.clone().requires_grad_()
                ref = run_reference(key.kind, p, xr, None)[0]
                (g_ref,) = torch.autograd.grad(ref, xr, g)
                try:
                    xk.requires_grad_()
                    out = NeuronFunction.apply(xk, key.kind, p, key.save, impl)
                    (g_k,) = torch.autograd.grad(out, xk, g)
                    diffs = [_compare("spikes", out.detach(), ref.detach(), 0.0),
                             _compare("input gradients", g_k, g_ref, tol)]
                except Exception as exc:  # noqa: BLE001 - any failure of the kernel fails the check
                    return _raised(exc, tol)
    problems = [d for d, _ in diffs if d is not None]
    max_diff = max(m for _, m in diffs)
    return CheckResult(not problems, "; ".join(problems) or "ok", max_diff, tol)


def _raised(exc: Exception, tol: float) -> CheckResult:
    lines = str(exc).strip().splitlines()
    return CheckResult(False, f"raised {type(exc).__name__}: {lines[0][:300] if lines else ''}", math.nan, tol)


def _compiling() -> bool:
    """Whether torch.compile is tracing this call (``torch.compiler.is_compiling``, torch >= 2.3)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _warn(message: str) -> None:
    warnings.warn(f"spikformers: {message}", KernelCheckWarning, stacklevel=5)  # 5: the caller of the neuron


def guard(impl: ModuleType, x: torch.Tensor, kind: str, p: NeuronParams, save: str, v_init: bool = False,
          return_v: bool = False) -> ModuleType:
    """The module to run this call with: ``impl`` unless it is the Triton path and this call's variant failed its
    self-check (checked here on first use) or its indices overflow int32; then :mod:`.eager`.

    ``x`` is the contiguous input in its compute dtype; ``save`` the format chosen (``"none"`` at inference).
    """
    if impl.__name__ != _TRITON_MODULE or _compiling():  # tracing: fake tensors, nothing to run
        return impl
    T = x.shape[0]
    N = x.numel() // T
    if index_overflows(T, N, save):
        key = make_key("triton", x, kind, p, save, v_init, return_v)
        with _lock:
            new = key not in _too_large
            _too_large.add(key)
        if new:
            _warn(f"{key}: {T} x {N} elements with saved state {save!r} overflow its 32-bit indices; "
                  "this call and all later ones this large use the eager path")
        return eager
    if not kernel_check_enabled():
        return impl
    key = make_key("triton", x, kind, p, save, v_init, return_v)
    result = _results.get(key)
    if result is None:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return eager  # nothing can be checked inside a CUDA graph capture: warm up before capturing
        with _lock:
            result = _results.get(key)
            new = result is None
            if new:
                result = _results[key] = check(impl, key)
        if new and not result.ok:
            _warn(f"{key} failed its self-check: {result.detail}; this call and all later ones with this key use "
                  f"the eager path ({ENV}=0 skips the check)")
    return impl if result.ok else eager


def variant_keys(backend: str, device: str, dtype: str, T: str = "any", N: str = "16",
                 aligned: bool = True) -> list[KernelKey]:
    """One key for every variant a backend runs for a device and dtype: each kind with each saved-state format it
    can use in training (reset detached and attached for the LIF), and at inference with and without a membrane
    passed in / written out."""
    keys = []
    for kind in KIND_IDS:
        for detach in (True, False) if kind == "lif" else (True,):
            full = ["exact", "recompute"]  # the formats that keep the membrane or rebuild it
            saves = ["code"] if kind == "ternary_guo" else ["q24", "q16", *full] if detach else full
            keys += [KernelKey(backend, device, dtype, kind, s, detach, False, False, T, N, aligned) for s in saves]
        keys += [KernelKey(backend, device, dtype, kind, "none", True, v0, vT, T, N, aligned)
                 for v0, vT in ((False, False), (True, True), (False, True))]
    return keys
