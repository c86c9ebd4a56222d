"""The C++ kernels built for other x86-64 levels than this CPU's (``SPIKFORMERS_CPU_ARCH``) compute the same numbers.

The event-driven kernels' vectors follow the instruction set they are built for (64 bytes with AVX-512, 32 with AVX2,
16 with SSE only), so each level is its own code. A native build tests one of them; this builds the others this CPU
can run, in a fresh process each (a process loads one library), and checks the event-driven products against torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spikformers.kernels import cpp

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import torch
from torch.nn import functional as F
from spikformers.kernels import cpp, spike_ops

assert cpp.available(), cpp.error
print("lanes", cpp.vector_lanes(torch.float32), cpp.build_flags)
gen = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
    for K, N, top in ((64, 200, 1), (24, 40, 3)):  # 200, 40: columns past the last full tile; top 3: bytes
        x = ((torch.rand(300, K, generator=gen) < 0.2) * torch.randint(1, top + 1, (300, K), generator=gen)).to(dtype)
        w = torch.randn(N, K, generator=gen, dtype=dtype)
        b = torch.randn(N, generator=gen, dtype=dtype)
        px = spike_ops._pack_compiled(x)
        y = cpp.sparse_linear(px.data, px.form, 300, w.t().contiguous(), b)
        torch.testing.assert_close(y, F.linear(x, w, b), atol=tol, rtol=0)
        g = torch.randn(300, N, generator=gen, dtype=dtype)
        torch.testing.assert_close(cpp.sparse_linear_wgrad(px.data, px.form, g, K), x.t() @ g, atol=tol * 10, rtol=0)
    for Cin, Cout, H, W in ((8, 70, 9, 7), (16, 24, 8, 8)):  # 70: a tile of fewer vectors; 9 x 7: odd planes
        x = (torch.rand(2, Cin, H, W, generator=gen) < 0.2).to(dtype)
        w = torch.randn(Cout, Cin, 3, 3, generator=gen, dtype=dtype)
        px = spike_ops._pack_compiled(x)
        torch.testing.assert_close(cpp.sparse_conv3x3(px.data, px.form, tuple(x.shape), w, None),
                                   F.conv2d(x, w, None, 1, 1), atol=tol, rtol=0)
        g = torch.randn(2, Cout, H, W, generator=gen, dtype=dtype)
        want = torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]
        got = cpp.sparse_conv3x3_wgrad(px.data, px.form, g, tuple(w.shape), tuple(x.shape))
        torch.testing.assert_close(got, want, atol=tol * 10, rtol=0)
    q, k, v = ((torch.rand(2, 3, 16, 32, generator=gen) < 0.3).to(dtype) for _ in range(3))  # [B, H, N, d]
    heads = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]  # head splits of [B, N, H * d]
    out = spike_ops.spike_attention(*heads)
    assert out is not None
    torch.testing.assert_close(out, q @ (k.transpose(-2, -1) @ v), atol=tol, rtol=0)
print("ok")
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _native_lanes() -> int:
    import torch

    return cpp.vector_lanes(torch.float32) if cpp.available() else 0


LEVELS = {"x86-64": (4, set()), "x86-64-v3": (8, {"avx2", "fma"})}  # float lanes, the CPU flags needed


@pytest.mark.parametrize("arch", list(LEVELS))
def test_other_builds_compute_the_same(arch, tmp_path):
    lanes, needs = LEVELS[arch]
    if not cpp.available() or os.uname().machine != "x86_64":
        pytest.skip("an x86-64 CPU with the C++ kernels built is needed")
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU cannot run a {arch} build")
    if _native_lanes() == lanes:
        pytest.skip(f"the native build already has {lanes}-lane vectors (tested by the rest of the suite)")
    env = {**os.environ, "SPIKFORMERS_CPU_ARCH": arch, "SPIKFORMERS_CACHE": str(tmp_path),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"lanes {lanes} " in done.stdout and f"-march={arch}" in done.stdout and done.stdout.rstrip().endswith("ok")
