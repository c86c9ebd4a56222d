"""``spikformers doctor``: what this machine offers the library, and whether every neuron kernel that can run here
computes what the reference loops compute.

It prints Python, torch (with its CUDA and cuDNN build), the CUDA devices, Triton, the C++ compiler and OpenMP
that the CPU kernels are built with, the CPU and its vector extensions; builds (or loads) the C++ kernels; then
runs the self-check of :mod:`spikformers.kernels.selfcheck` for every kernel variant on every device it
can: the C++ and eager kernels on the CPU, the Triton and eager kernels on each CUDA device (on a machine without
one, the Triton kernels under Triton's interpreter when ``TRITON_INTERPRET=1``, and compiled for ``--cuda-arch``
with Triton's own ptxas to show that they build). The last line is the verdict; the exit status is 0 when
nothing is wrong, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import subprocess
import sys
import warnings
from types import ModuleType

import torch

from .cli import command
from .kernels import calibration, cpp, eager, selfcheck
from .kernels.common import triton_importable, triton_interpret

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "asimd", "sve")


def _line(label: str, value: str) -> None:
    print(f"  {label:15s} {value}")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "(no output)"


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and the vector extensions of :data:`ISA_FLAGS` it has (from ``/proc/cpuinfo``)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = (part.strip() for part in line.partition(":"))
                if name == "model name" and not model:
                    model = value
                elif name in ("flags", "Features") and not flags:  # x86 / ARM
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def _torch_line() -> str:
    if torch.version.cuda is None:
        return f"{torch.__version__} (CPU-only build)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    cudnn_s = f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if cudnn else "none"
    return f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn_s})"


def cuda_devices() -> list[str]:
    """``cuda:i`` for every CUDA device torch sees."""
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _openmp_line() -> str:
    info = torch.__config__.parallel_info()
    backend = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "parallel backend" in ln), "?")
    omp = next((ln.strip() for ln in info.splitlines() if ln.startswith("OpenMP")), "no OpenMP")
    return f"torch: {omp}, ATen backend {backend}, {torch.get_num_threads()} threads"


def _cpp_line() -> tuple[str, str | None]:
    """The C++ kernels' state (building them if needed) and the problem, if any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported here instead
        built = cpp.available()
    if built:
        flags = " ".join(f for f in cpp.build_flags or [] if f.startswith("-march=") or f == "-fopenmp")
        return f"built, {cpp.threading_model} ({flags or 'portable flags'}): {cpp.library_path}", None
    if cpp.error == "disabled by SPIKFORMERS_NO_CPP":
        return f"not built: {cpp.error} (eager torch on the CPU)", None
    return f"NOT BUILT: {cpp.error}", f"the C++ kernels did not build ({(cpp.error or '').splitlines()[0][:200]})"


def _calibration_line(recalibrate: bool) -> str:
    """Where this machine's event-driven vs dense decisions are cached, and how many (forgotten first if asked)."""
    found = calibration.recalibrate() if recalibrate else calibration.current()
    if recalibrate and found.path is not None:
        found.path.unlink(missing_ok=True)
    where = found.path or "memory"
    if recalibrate:
        return f"forgotten; measured again per shape on first use and cached in {where}"
    n = len(found.entries)
    return (f"{n} shape decision{'s' if n != 1 else ''} timed on this machine, cached in {where}" if n else
            f"not calibrated yet: timed per shape on first use, cached in {where}")


def run_checks(backend: str, impl: ModuleType, device: str, dtype: str) -> list[tuple[selfcheck.KernelKey,
                                                                                      selfcheck.CheckResult]]:
    """The self-check of every variant of ``impl`` on ``device`` in ``dtype`` (see :func:`selfcheck.variant_keys`),
    plus one with Triton's other launch specialisations (T = 1, N not divisible by 16, unaligned input)."""
    keys = selfcheck.variant_keys(backend, device, dtype)
    keys.append(selfcheck.KernelKey(backend, device, dtype, "lif", "q24", True, False, False, "1", "any", False))
    outcomes = []
    for key in keys:
        try:
            outcomes.append((key, selfcheck.check(impl, key)))
        except Exception as exc:  # noqa: BLE001 - the reference itself failed here: report it, go on
            outcomes.append((key, selfcheck.CheckResult(False, f"the check raised {type(exc).__name__}: {exc}",
                                                        math.nan, 0.0)))
    return outcomes


def _compile_line(arch: int) -> tuple[str, list[str]]:
    """Compile every CUDA variant of the Triton kernels for ``sm_<arch>`` without a GPU; the summary and the
    variants that failed."""
    try:
        from triton import knobs

        from .kernels import triton as triton_kernels

        missing = [t for t in (knobs.nvidia.ptxas.path,) if not os.path.exists(t)]
        if missing:
            return f"not compiled: Triton's ptxas is missing ({missing[0]})", []
        names = list(triton_kernels.cuda_variants())
    except Exception as exc:  # noqa: BLE001 - no CUDA toolchain in this Triton: say so
        return f"not compiled: Triton has no CUDA toolchain here ({exc})", []
    failed = []
    for name in names:
        try:
            triton_kernels.compile_for_cuda(arch, [name])
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is the finding
            failed.append(f"Triton kernel {name} does not compile for sm_{arch}: {str(exc).strip()[:200]}")
    return f"{len(names) - len(failed)}/{len(names)} variants compiled for sm_{arch} (Triton's ptxas, no GPU)", failed


def doctor(cuda_arch: int = 90, compile_kernels: bool = True, verbose: bool = False, recalibrate: bool = False) -> int:
    """Print the report and the verdict; returns the exit status (0: no problem, 1: problems). ``recalibrate``
    forgets this machine's event-driven vs dense timings (:mod:`.kernels.calibration`)."""
    from . import __version__

    problems: list[str] = []
    print(f"spikformers {__version__} doctor")
    _line("python", f"{platform.python_version()} ({sys.executable})")
    _line("torch", _torch_line())
    devices = cuda_devices()
    if not devices:
        _line("cuda devices", "none")
    for dev in devices:
        props = torch.cuda.get_device_properties(dev)
        _line(dev, f"{props.name}, compute capability {props.major}.{props.minor}, "
                   f"{props.total_memory / 2**30:.1f} GiB")
    triton_ok = triton_importable()
    if triton_ok:
        import triton

        _line("triton", triton.__version__ + (" (TRITON_INTERPRET=1: interpreter)" if triton_interpret() else ""))
    else:
        _line("triton", "not importable")
        if devices:
            problems.append("CUDA devices but triton is not importable: neurons run on the slower eager path")
    compiler = cpp.find_compiler()
    _line("c++ compiler", f"{compiler}: {_first_line([compiler, '--version'])}" if compiler else
          "none found ($CXX, g++, clang++, c++)")
    _line("openmp", _openmp_line())
    model, isa = cpu_description()
    _line("cpu", f"{model}, {os.cpu_count()} logical cores")
    _line("cpu isa", " ".join(isa) or "none of " + " ".join(ISA_FLAGS))
    cpp_text, cpp_problem = _cpp_line()
    _line("cpu kernels", cpp_text)
    problems += [cpp_problem] if cpp_problem else []
    if cpp.available():
        _line("cpu calibration", _calibration_line(recalibrate))

    groups: list[tuple[str, ModuleType, str, str]] = []
    if cpp.available():
        groups += [("cpp", cpp, "cpu", "float32"), ("cpp", cpp, "cpu", "float64")]
    groups += [("eager", eager, "cpu", "float32"), ("eager", eager, "cpu", "float64")]
    if triton_ok and devices:
        from .kernels import triton as triton_kernels

        for dev in devices:
            groups += [("triton", triton_kernels, dev, "float32"), ("eager", eager, dev, "float32")]
        _line("triton kernels", f"built and checked by the self-checks below on {', '.join(devices)}")
    elif triton_ok and triton_interpret():
        from .kernels import triton as triton_kernels

        groups.append(("triton", triton_kernels, "cpu", "float32"))
        _line("triton kernels", "no CUDA device: checked under Triton's interpreter (TRITON_INTERPRET=1)")
    elif devices:
        _line("triton kernels", "triton is not importable: Triton kernels not checked")
    else:
        _line("triton kernels", "no CUDA device: Triton kernels not checked")
    if triton_ok and not devices and compile_kernels:
        text, failed = _compile_line(cuda_arch)
        _line("", text)
        problems += failed

    print("\nself-checks against the reference loops (spikes exact, membranes and input gradients within tolerance)")
    print(f"  {'backend':8s} {'device':7s} {'dtype':8s} {'variants':>8s} {'passed':>7s}  {'largest diff':>12s}  "
          "largest diff / its tolerance")
    total = 0
    for backend, impl, device, dtype in groups:
        with torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext():
            outcomes = run_checks(backend, impl, device, dtype)
        total += len(outcomes)
        passed = sum(r.ok for _, r in outcomes)
        finite = [r for _, r in outcomes if math.isfinite(r.max_diff)]  # NaN: the kernel raised
        largest = max((r.max_diff for r in finite), default=0.0)
        share = max((r.max_diff / r.tolerance for r in finite if r.tolerance > 0), default=0.0)
        print(f"  {backend:8s} {device:7s} {dtype:8s} {len(outcomes):8d} {passed:7d}  {largest:12.2g}  {share:.2g}")
        for key, result in outcomes:
            if verbose or not result.ok:
                detail = result.detail if not result.ok else \
                    f"max diff {result.max_diff:.2g}, tolerance {result.tolerance:.2g}"
                print(f"      {'ok  ' if result.ok else 'FAIL'} {key}: {detail}")
            if not result.ok:
                problems.append(f"{key}: {result.detail}")
    print()
    if problems:
        shown = problems[:3] + ([f"and {len(problems) - 3} more (listed above)"] if len(problems) > 3 else [])
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: " + "; ".join(shown))
        return 1
    print(f"all checks passed ({total} kernel self-checks)")
    return 0


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-arch", type=int, default=90, metavar="SM",
                   help="without a CUDA device: compile the Triton kernels for this compute capability (default 90)")
    p.add_argument("--no-compile", action="store_true", help="without a CUDA device: do not compile the Triton kernels")
    p.add_argument("--verbose", action="store_true", help="print every self-check, not only the failed ones")
    p.add_argument("--recalibrate", action="store_true",
                   help="forget this machine's event-driven vs dense timings (measured again on first use)")


@command("doctor", "check this machine: devices, compilers, and every neuron kernel against the reference loops",
         _doctor_args)
def _doctor(args: argparse.Namespace) -> int:
    return doctor(args.cuda_arch, not args.no_compile, args.verbose, args.recalibrate)
