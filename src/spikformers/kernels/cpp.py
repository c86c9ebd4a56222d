"""CPU fused path: a small C++ file (``csrc/neurons.cpp``) compiled on first use and called through ctypes.

Where torch's own OpenMP runtime is a loaded ``libgomp.so.1`` (the Linux wheels), the library is built with
OpenMP and the loader hands it that very copy, so the kernels run on torch's thread pool instead of starting
threads that compete with torch's still-spinning workers. Elsewhere, or with ``SPIKFORMERS_NO_OPENMP=1``, it is
the plain std::thread build.

The source needs no torch headers, so the build takes about a second with any g++/clang++. The library is
cached under ``$SPIKFORMERS_CACHE`` (default ``~/.cache/spikformers``) keyed by a hash of the source, the
flags, the compiler and the CPU. Set ``SPIKFORMERS_NO_CPP=1`` to disable it; when no compiler is found or
the build fails, :func:`available` is False and the dispatcher uses the eager torch path instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from .common import KIND_IDS, SAVED_IDS, NeuronParams, saved_shape

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "neurons.cpp", CSRC / "bn_neuron.cpp", CSRC / "spikes.cpp", CSRC / "conv.cpp",
           CSRC / "attention.cpp")  # one library
# shared by the sources
HEADERS = (CSRC / "bits.h", CSRC / "parallel.h", CSRC / "vec.h", CSRC / "lif.h", CSRC / "pool.h")
RECOMPUTES = True  # backward takes the input itself (save "recompute") and rebuilds the membrane natively
OVERWRITES = True  # forward(..., overwrite=True) writes the spikes over its input
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-fno-trapping-math",
              "-ffp-contract=off"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
error: str | None = None
threading_model: str | None = None  # "openmp" (torch's own pool) or "std::thread", once built
library_path: Path | None = None  # the loaded shared library, once built
build_flags: list[str] | None = None  # the compiler flags it was built with


def cache_dir() -> Path:
    """Where built libraries and this machine's dispatch calibration are kept: ``$SPIKFORMERS_CACHE/kernels``
    (default ``~/.cache/spikformers/kernels``), else a folder in the temp dir when that cannot be made."""
    root = os.environ.get("SPIKFORMERS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spikformers")
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = Path(tempfile.gettempdir()) / "spikformers-kernels"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.{threading.get_ident()}.tmp.so")
    cmd = [compiler, *flags, *(str(p) for p in SOURCES), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, target)  # atomic: concurrent builders never see a half-written library


def libgomp_path() -> str | None:
    """Path of the ``libgomp.so.1`` the process already holds (torch's own OpenMP runtime in the Linux wheels).

    Only when there is one does an OpenMP build share torch's pool: the loader hands it that copy. Elsewhere
    (another OpenMP runtime, or a renamed libgomp) it would start a second pool whose idle workers spin against
    torch's, so the plain std::thread build is used.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = (line.split()[-1] for line in f if line.rstrip().endswith("/libgomp.so.1"))
            return next(paths, None)
    except OSError:
        return None


def target_arch() -> str:
    """The ``-march`` the library is built for: ``$SPIKFORMERS_CPU_ARCH`` (e.g. ``x86-64-v3``: AVX2 + FMA, the build
    for any recent x86-64 CPU), else ``native`` (this CPU's full instruction set)."""
    return os.environ.get("SPIKFORMERS_CPU_ARCH") or "native"


def find_compiler() -> str | None:
    """The C++ compiler the library is built with: ``$CXX``, else the first of g++, clang++, c++ on the PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")


def _build(openmp: bool = True) -> ctypes.CDLL:
    """Compile (or take from the cache) and load the library; ``openmp=False`` builds the std::thread variant."""
    global threading_model, library_path, build_flags
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (looked for $CXX, g++, clang++, c++)")
    source = b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS))
    last: Exception | None = None
    # OpenMP first, so that the kernels share torch's thread pool (see csrc/parallel.h); then without it
    tries = [BASE_FLAGS + [f"-march={target_arch()}"], BASE_FLAGS]
    if openmp and os.environ.get("SPIKFORMERS_NO_OPENMP", "") in ("", "0") and libgomp_path():
        tries = [f + ["-fopenmp"] for f in tries] + tries
    for flags in tries:
        key = hashlib.sha256(
            source + " ".join([compiler, *flags, platform.machine(), _cpu_id()]).encode()
        ).hexdigest()[:16]
        target = cache_dir() / f"spikformers_neurons_{key}.so"
        try:
            if not target.exists():
                _compile(compiler, flags, target)
            lib = ctypes.CDLL(str(target))
            threading_model = "openmp" if "-fopenmp" in flags else "std::thread"
            library_path, build_flags = target, flags
            break
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            last = exc
    else:
        raise RuntimeError(str(last))
    tail = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int] + [ctypes.c_double] * 5 + [ctypes.c_int] * 2
    ptrs = [ctypes.c_int] + [ctypes.c_void_p] * 4
    for name, args in (("spk_forward", ptrs + [ctypes.c_void_p] * 2 + tail), ("spk_backward", ptrs + tail)):
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    i64, ptr, i32, dbl = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for name, args, res in (
        ("spk_openmp_symbol", [], ptr),
        ("spk_vec_lanes", [i32], i32),
        ("spk_pack_bits", [i32, ptr, i64, ptr, i32], i64),
        ("spk_pack_u8", [i32, ptr, i64, ptr, i32], i64),
        ("spk_unpack_bits", [i32, ptr, i64, ptr, i32], None),
        ("spk_sparse_linear", [i32, i32, ptr, ptr, ptr, ptr, i64, i64, i64, i32], None),
        ("spk_sparse_linear_wgrad", [i32, i32, ptr, ptr, ptr, i64, i64, i64, i32], None),
        ("spk_maxpool3s2", [i32, ptr, ptr, i64, i64, i64, i32], None),
        ("spk_maxpool3s2_backward", [i32, ptr, ptr, ptr, i64, i64, i64, i32], None),
        ("spk_sparse_conv3x3", [i32, i32, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i32], None),
        ("spk_sparse_conv3x3_wgrad", [i32, i32, ptr, ptr, ptr, i64, i64, i64, i64, i64, i32], None),
        ("spk_bn_stats", [i32, ptr, i64, i64, i64, i64, ptr, i32], None),
        ("spk_spike_attention", [i32, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32], i32),
        ("spk_spike_attention_backward", [i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32], i32),
        ("spk_bn_lif_forward", [i32, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, dbl, dbl, dbl, i32], None),
        ("spk_bn_apply_grad", [i32, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32], None),
        ("spk_bn_lif_backward", [i32, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, dbl, dbl, dbl, dbl, i32,
                                 ptr, i32], None),
    ):
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = res
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first call; None when it cannot be built."""
    global _lib, _tried, error
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("SPIKFORMERS_NO_CPP", "") not in ("", "0"):
                error = "disabled by SPIKFORMERS_NO_CPP"
            else:
                try:
                    _lib = _build()
                except Exception as exc:  # noqa: BLE001 - any build failure means: use the eager path
                    error = str(exc)
                    warnings.warn(f"spikformers: C++ neuron kernels unavailable, using eager torch ({exc})",
                                  RuntimeWarning, stacklevel=3)
            _tried = True
    return _lib


def available() -> bool:
    """True when the compiled CPU kernels can be used."""
    return library() is not None


def supports(x: torch.Tensor) -> bool:
    """True when ``x`` can go through the compiled kernels (a CPU floating tensor and the library built)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and available()


def _loaded() -> ctypes.CDLL:
    """The library; callers have checked :func:`available` (or :func:`supports`) first."""
    lib = library()
    assert lib is not None, "spikformers C++ kernels are not built"
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(
    x: torch.Tensor, kind: str, p: NeuronParams, save: str, v_init: torch.Tensor | None = None,
    v_final: torch.Tensor | None = None, overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes for contiguous ``x: [T, ...]`` (float32/64) and the saved state for backward (``save`` format).

    ``v_init`` / ``v_final``: optional contiguous ``[...]`` membranes (x's dtype) to start from / to write at the end.
    ``overwrite``: write the spikes over ``x`` itself (a scratch input nobody reads again) instead of a new tensor.
    """
    lib = _loaded()
    T = x.shape[0]
    N = x.numel() // max(T, 1)
    out = x if overwrite else torch.empty_like(x)
    saved = None
    planes = hsave = None
    if save != "none":
        shape, dtype = saved_shape(save, x)
        saved = torch.empty(shape, dtype=dtype)
        if save == "exact":
            hsave = saved
        else:
            planes = saved
    rc = lib.spk_forward(
        int(x.dtype == torch.float64), _ptr(x), _ptr(out), _ptr(planes), _ptr(hsave), _ptr(v_init), _ptr(v_final),
        T, N, KIND_IDS[kind],
        SAVED_IDS[save], p.tau, p.v_th, p.v_reset, p.alpha, p.decay, int(p.detach_reset), torch.get_num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"spk_forward: unsupported kind/save combination {kind!r}/{save!r}")
    return out, saved


def backward(grad: torch.Tensor, saved: torch.Tensor, kind: str, p: NeuronParams, save: str) -> torch.Tensor:
    """Gradient w.r.t. the input from the gradient w.r.t. the spikes and the state saved by :func:`forward`."""
    lib = _loaded()
    T = grad.shape[0]
    N = grad.numel() // max(T, 1)
    grad_x = torch.empty_like(grad)
    planes, hsave = (None, saved) if save in ("exact", "recompute") else (saved, None)
    rc = lib.spk_backward(
        int(grad.dtype == torch.float64), _ptr(grad), _ptr(grad_x), _ptr(planes), _ptr(hsave), T, N,
        KIND_IDS[kind], SAVED_IDS[save], p.tau, p.v_th, p.v_reset, p.alpha, p.decay, int(p.detach_reset),
        torch.get_num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"spk_backward: unsupported kind/save combination {kind!r}/{save!r}")
    return grad_x


def _pack(x: torch.Tensor, fn: str, size: int) -> tuple[torch.Tensor, int] | None:
    lib = _loaded()
    out = torch.empty(size, dtype=torch.uint8)
    nonzero = getattr(lib, fn)(int(x.dtype == torch.float64), _ptr(x), x.numel(), _ptr(out), torch.get_num_threads())
    return None if nonzero < 0 else (out, nonzero)


def pack_bits(x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Bits of contiguous CPU float ``x`` (element ``8b+j`` in bit ``j`` of byte ``b``) and how many are 1;
    None if not every value is 0 or 1."""
    return _pack(x, "spk_pack_bits", (x.numel() + 7) // 8)


def pack_u8(x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Bytes of contiguous CPU float ``x`` and how many are not zero; None if not every value is an integer in
    [0, 255]."""
    return _pack(x, "spk_pack_u8", x.numel())


def unpack_bits(bits: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``n`` values (0 or 1, ``dtype`` float32/float64) that :func:`pack_bits` packed into ``bits``."""
    lib = _loaded()
    out = torch.empty(n, dtype=dtype)
    lib.spk_unpack_bits(int(dtype == torch.float64), _ptr(bits), n, _ptr(out), torch.get_num_threads())
    return out


def sparse_linear(data: torch.Tensor, form: str, M: int, weight_t: torch.Tensor, bias: torch.Tensor | None
                  ) -> torch.Tensor:
    """``x @ weight_t + bias`` (``[M, N]``) for ``x: [M, K]`` that is mostly zeros, packed as ``"bits"`` (K a
    multiple of 8) or ``"u8"`` (:func:`pack_bits`, :func:`pack_u8`); ``weight_t: [K, N]`` contiguous.

    Each output row adds the rows of ``weight_t`` where ``x`` is not zero (times that value), so it costs the
    fraction of non-zeros times the dense product.
    """
    lib = _loaded()
    K, N = weight_t.shape
    y = torch.empty(M, N, dtype=weight_t.dtype)
    lib.spk_sparse_linear(int(weight_t.dtype == torch.float64), _form_id(form), _ptr(data), _ptr(weight_t), _ptr(bias),
                          _ptr(y), M, K, N, torch.get_num_threads())
    return y


def sparse_linear_wgrad(data: torch.Tensor, form: str, g: torch.Tensor, K: int) -> torch.Tensor:
    """``x^T @ g`` (``[K, N]``) for ``x: [M, K]`` packed as ``"bits"`` (K a multiple of 8) or ``"u8"``; ``g: [M, N]``.
    """
    lib = _loaded()
    M, N = g.shape
    out = torch.empty(K, N, dtype=g.dtype)
    lib.spk_sparse_linear_wgrad(int(g.dtype == torch.float64), _form_id(form), _ptr(data), _ptr(g), _ptr(out), M, K,
                                N, torch.get_num_threads())
    return out


ATTENTION_HEAD_SIZES = (8, 16, 24, 32, 40, 48, 56, 64)  # head sizes csrc/attention.cpp is compiled for


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: tuple[int, int, int, int],
                    dtype: torch.dtype) -> torch.Tensor:
    """``Q (K^T V)`` per head, ``[M, N, H * D]`` in ``dtype``, for ``q, k, v`` the bits (:func:`pack_bits`) of binary
    ``[M, N, H * D]`` tensors; ``shape = (M, N, H, D)``, D one of :data:`ATTENTION_HEAD_SIZES`."""
    lib = _loaded()
    M, N, H, D = shape
    out = torch.empty(M, N, H * D, dtype=dtype)
    if lib.spk_spike_attention(int(dtype == torch.float64), _ptr(q), _ptr(k), _ptr(v), _ptr(out), M, N, H, D,
                               torch.get_num_threads()):
        raise ValueError(f"spike attention: head size {D} is not one of {ATTENTION_HEAD_SIZES}")
    return out


def spike_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                             shape: tuple[int, int, int, int], needs: tuple[bool, bool, bool]) -> list:
    """Gradients for ``q, k, v`` (``[M, N, H * D]``, None where ``needs`` is False) of :func:`spike_attention` for
    the contiguous gradient ``g: [M, N, H * D]`` of its output."""
    lib = _loaded()
    M, N, H, D = shape
    grads = [torch.empty_like(g) if need else None for need in needs]
    if lib.spk_spike_attention_backward(int(g.dtype == torch.float64), _ptr(q), _ptr(k), _ptr(v), _ptr(g),
                                        *(_ptr(t) for t in grads), M, N, H, D, torch.get_num_threads()):
        raise ValueError(f"spike attention: head size {D} is not one of {ATTENTION_HEAD_SIZES}")
    return grads


def _form_id(form: str) -> int:
    if form not in ("bits", "u8"):
        raise ValueError(f"packed input must be 'bits' or 'u8', got {form!r}")
    return 0 if form == "bits" else 1


def vector_lanes(dtype: torch.dtype) -> int:
    """Values of ``dtype`` in one vector register of the built library (16 float32 with AVX-512, 8 with AVX2)."""
    return _loaded().spk_vec_lanes(int(dtype == torch.float64))


def _padded_channels(C: int, dtype: torch.dtype) -> int:
    lanes = vector_lanes(dtype)  # the weight gradient's columns come in whole vectors
    return -(-C // lanes) * lanes


def sparse_conv3x3(data: torch.Tensor, form: str, x_shape: tuple[int, ...], weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for a 3x3 ``weight`` and ``x: [B, Cin, H, W]`` packed by
    ``pack_bits`` (``"bits"``) or ``pack_u8`` (``"u8"``), adding only the weights of the non-zero inputs.

    ``weight`` / ``bias`` (float32/64) give the output dtype; the result is a contiguous ``[B, Cout, H, W]``.
    """
    lib = _loaded()
    B, Cin, H, W = x_shape
    Cout = weight.shape[0]
    if tuple(weight.shape) != (Cout, Cin, 3, 3):
        raise ValueError(f"sparse_conv3x3 needs a [Cout, {Cin}, 3, 3] weight, got {tuple(weight.shape)}")
    weight = weight.contiguous()
    bias = None if bias is None else bias.to(weight.dtype).contiguous()
    y = torch.empty(B, Cout, H, W, dtype=weight.dtype)
    lib.spk_sparse_conv3x3(int(weight.dtype == torch.float64), _form_id(form), _ptr(data), _ptr(weight), _ptr(bias),
                           _ptr(y), B, Cin, Cout, H, W, torch.get_num_threads())
    return y


def sparse_conv3x3_wgrad(data: torch.Tensor, form: str, g: torch.Tensor, weight_shape: tuple[int, ...],
                         x_shape: tuple[int, ...]) -> torch.Tensor:
    """Weight gradient ``[Cout, Cin, 3, 3]`` of :func:`sparse_conv3x3` for the packed input and ``g: [B, Cout, H, W]``.
    """
    lib = _loaded()
    B, Cin, H, W = x_shape
    Cout = weight_shape[0]
    C = _padded_channels(Cout, g.dtype)
    g = g.contiguous()
    out = torch.zeros(Cin * 9, C, dtype=g.dtype)
    lib.spk_sparse_conv3x3_wgrad(int(g.dtype == torch.float64), _form_id(form), _ptr(data), _ptr(g), _ptr(out), B,
                                 Cin, Cout, H, W, torch.get_num_threads())
    return out[:, :Cout].t().reshape(Cout, Cin, 3, 3)


def pooled_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with its last two sides after MaxPool(3, stride 2, padding 1) (csrc/pool.h's ``spk::pooled``)."""
    *lead, H, W = shape
    return (*lead, (H - 1) // 2 + 1, (W - 1) // 2 + 1)


def maxpool3s2(x: torch.Tensor) -> torch.Tensor:
    """MaxPool(3, stride 2, padding 1) of contiguous CPU float ``x: [N, C, H, W]``."""
    lib = _loaded()
    N, C, H, W = x.shape
    y = torch.empty(pooled_shape(x.shape), dtype=x.dtype)
    lib.spk_maxpool3s2(int(x.dtype == torch.float64), _ptr(x), _ptr(y), N * C, H, W, torch.get_num_threads())
    return y


def maxpool3s2_backward(bits: torch.Tensor, g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Input gradient of :func:`maxpool3s2` for a binary input of ``shape`` packed as ``bits``, given ``g``."""
    lib = _loaded()
    N, C, H, W = shape
    gx = torch.empty(shape, dtype=g.dtype)
    lib.spk_maxpool3s2_backward(int(g.dtype == torch.float64), _ptr(bits), _ptr(g), _ptr(gx), N * C, H, W,
                                torch.get_num_threads())
    return gx


# Batch norm fused with the LIF (csrc/bn_neuron.cpp). y: contiguous [T, A, C, P]; per-channel vectors in y's dtype.
# pool_w > 0: the unit max-pools its spikes (3x3, stride 2, padding 1) on planes of P / pool_w by pool_w; its output,
# and the gradient its backward takes, are then the pooled spikes [T, A, C, pooled plane].
Dims = tuple[int, int, int, int]


def bn_stats(y: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sum and sum of squares (float64 ``[C]`` each) of ``y`` viewed as ``dims = (T, A, C, P)``."""
    out = torch.empty(2, dims[2], dtype=torch.float64)
    _loaded().spk_bn_stats(int(y.dtype == torch.float64), _ptr(y), *dims, _ptr(out), torch.get_num_threads())
    return out[0], out[1]


def bn_lif_forward(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dims: Dims, p: NeuronParams,
                   out: torch.Tensor, pool_w: int = 0) -> torch.Tensor:
    """Spikes of the LIF ``p`` driven by ``y * scale[c] + shift[c]``, written into ``out`` (may be ``y`` unless
    pooling)."""
    _loaded().spk_bn_lif_forward(int(y.dtype == torch.float64), _ptr(y), _ptr(out), _ptr(scale), _ptr(shift), *dims,
                                 pool_w, p.tau, p.v_th, p.v_reset, torch.get_num_threads())
    return out


def bn_lif_sums(grad: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor,
                dims: Dims, p: NeuronParams, pool_w: int = 0, gz: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass 1: per channel ``sum(gz)`` and ``sum(gz * (y - mean))`` (float64 ``[C]``), ``gz`` the gradient
    w.r.t. the norm's output given ``grad`` w.r.t. the spikes; ``gz`` itself is written into ``gz`` (like ``y``)
    when given, for :func:`bn_apply_grad`."""
    sums = torch.empty(2, dims[2], dtype=torch.float64)
    _loaded().spk_bn_lif_backward(int(y.dtype == torch.float64), _ptr(grad), _ptr(y), _ptr(gz), _ptr(scale),
                                  _ptr(shift), _ptr(mean), *dims, pool_w, p.tau, p.v_th, p.v_reset, p.alpha,
                                  int(p.detach_reset), _ptr(sums), torch.get_num_threads())
    return sums[0], sums[1]


def bn_apply_grad(gz: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, k: torch.Tensor, dims: Dims,
                  out: torch.Tensor) -> torch.Tensor:
    """Backward pass 2 from the ``gz`` that :func:`bn_lif_sums` stored: ``out = gz * k[0, c] + (y - mean[c]) *
    k[1, c] + k[2, c]``, one streaming pass (no LIF rebuilt); ``out`` may be ``gz`` or ``y``."""
    _loaded().spk_bn_apply_grad(int(y.dtype == torch.float64), _ptr(gz), _ptr(y), _ptr(out), _ptr(mean),
                                _ptr(k.contiguous()), *dims, torch.get_num_threads())
    return out
