"""Fused neuron kernels against the reference loops: identical spikes, gradients to 1e-6, compact saved state."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from helpers import check_neuron, neuron_inputs
from spikformers.kernels import (
    available_backends,
    cpp,
    eager,
    lif_multistep,
    lif_reference,
    select_impl,
    ternary_lif_reference,
    ternary_multistep,
    ternary_reference,
)
from spikformers.kernels.common import NeuronParams, triton_importable
from spikformers.neurons import LIF, TernaryNeuron

CPU_BACKENDS = ["eager", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}"))]
LIF_PARAMS = [(2.0, 1.0, 0.0, 4.0), (1.7, 0.8, -0.3, 4.0), (3.3, 1.2, 0.2, 5.0), (1.0, 0.5, 0.0, 2.0)]
TOL = {"atol": 1e-6, "rtol": 1e-6}


def saved_bytes(fn, x):
    """Bytes of the distinct storages that autograd keeps for backward of ``fn(x)``."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("params", LIF_PARAMS)
def test_lif_matches_reference(backend, dtype, detach_reset, params):
    tau, v_th, v_reset, alpha = params
    x, g = neuron_inputs((6, 3, 257), dtype)
    check_neuron(lambda x: lif_multistep(x, tau, v_th, v_reset, alpha, detach_reset, backend=backend),
                 lambda x: lif_reference(x, tau, v_th, v_reset, alpha, detach_reset), x, g)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form,kwargs", [("guo", {"decay": 0.25, "v_th": 1.0}), ("guo", {"decay": 0.5, "v_th": 0.6}),
                                         ("lif", {"tau": 2.0, "v_th": 1.0}), ("lif", {"tau": 1.5, "v_th": 0.7})])
def test_ternary_matches_reference(backend, dtype, form, kwargs):
    x, g = neuron_inputs((5, 2, 300), dtype, seed=1)
    check_neuron(lambda x: ternary_multistep(x, form, backend=backend, **kwargs),
                 lambda x: ternary_multistep(x, form, backend="reference", **kwargs), x, g)


def test_modules_route_through_backends():
    x, g = neuron_inputs((4, 2, 50), torch.float32)
    check_neuron(LIF(tau=1.7, v_th=0.9), LIF(tau=1.7, v_th=0.9, backend="reference"), x, g)
    for form in ("guo", "lif"):
        check_neuron(TernaryNeuron(form), TernaryNeuron(form, backend="reference"), x, g)
    with pytest.raises(ValueError, match="backend"):
        TernaryNeuron(backend="nope")
    with pytest.raises(ValueError, match="backend"):
        lif_multistep(x, backend="nope")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_saved_state_is_compact(backend):
    x, _ = neuron_inputs((4, 8, 1024), torch.float32)
    n = x.numel()
    loop = saved_bytes(lambda x: lif_reference(x), x)
    assert loop == 8 * n  # the surrogate input and the reset factor, both float32
    auto = 4 * n if backend == "cpp" else 3 * n  # C++ keeps only its input (recompute); eager the q24 state
    assert saved_bytes(lambda x: lif_multistep(x, backend=backend), x) == auto
    assert saved_bytes(lambda x: lif_multistep(x, backend=backend, saved="q24"), x) == 3 * n
    assert saved_bytes(lambda x: lif_multistep(x, backend=backend, saved="q16"), x) == 2 * n
    assert saved_bytes(lambda x: lif_multistep(x, backend=backend, saved="exact"), x) == 4 * n
    assert saved_bytes(lambda x: lif_multistep(x, detach_reset=False, backend=backend), x) == 4 * n
    assert saved_bytes(lambda x: ternary_multistep(x, "guo", backend=backend), x) == n
    assert saved_bytes(lambda x: ternary_multistep(x, "lif", backend=backend), x) == auto


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("params", LIF_PARAMS[:2])
def test_recompute_matches_reference_and_saves_only_the_input(backend, dtype, detach_reset, params):
    tau, v_th, v_reset, alpha = params
    x, g = neuron_inputs((5, 3, 301), dtype, seed=4)
    lif = dict(tau=tau, v_th=v_th, v_reset=v_reset, alpha=alpha, detach_reset=detach_reset)
    check_neuron(lambda x: lif_multistep(x, **lif, backend=backend, saved="recompute"),
                 lambda x: lif_reference(x, **lif), x, g)
    ternary = dict(tau=tau, v_th=v_th, alpha=alpha)
    check_neuron(lambda x: ternary_multistep(x, "lif", **ternary, backend=backend, saved="recompute"),
                 lambda x: ternary_multistep(x, "lif", **ternary, backend="reference"), x, g)
    seen = []
    with saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        lif_multistep(x, backend=backend, saved="recompute")
    assert len(seen) == 1 and seen[0].data_ptr() == x.data_ptr()  # the input itself, no new state


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_saved_variants_gradients(backend):
    x, g = neuron_inputs((5, 4, 200), torch.float32)
    (g_ref,) = torch.autograd.grad(lif_reference(x), x, g)
    (g_exact,) = torch.autograd.grad(lif_multistep(x, backend=backend, saved="exact"), x, g)
    (g_q16,) = torch.autograd.grad(lif_multistep(x, backend=backend, saved="q16"), x, g)
    torch.testing.assert_close(g_exact, g_ref, **TOL)
    torch.testing.assert_close(g_q16, g_ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="saved"):
        lif_multistep(x, backend=backend, saved="fp8")


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
def test_cpp_and_eager_share_the_saved_format():
    x, g = neuron_inputs((4, 3, 333), torch.float32)
    p = NeuronParams(tau=1.7, v_th=0.9)
    cases = (("lif", "q24"), ("lif", "q16"), ("lif", "exact"), ("ternary_lif", "q24"), ("ternary_guo", "code"))
    for kind, save in cases:
        out_c, state_c = cpp.forward(x.detach(), kind, p, save)
        out_e, state_e = eager.forward(x.detach(), kind, p, save)
        assert torch.equal(out_c, out_e)
        torch.testing.assert_close(cpp.backward(g, state_e, kind, p, save), eager.backward(g, state_c, kind, p, save),
                                   **TOL)


def test_auto_falls_back_to_eager(monkeypatch):
    x = torch.randn(3, 10)
    monkeypatch.setattr(cpp, "available", lambda: False)
    assert select_impl(x, "auto") is eager
    with pytest.raises(RuntimeError, match="cpp"):
        select_impl(x, "cpp")
    assert torch.equal(lif_multistep(x), lif_reference(x))


def test_no_grad_half_and_odd_shapes():
    x = torch.randn(4, 3, 5, 7)
    with torch.no_grad():
        assert torch.equal(lif_multistep(x), lif_reference(x))
    xt = torch.randn(7, 4, 3).transpose(1, 2)  # non-contiguous
    assert torch.equal(lif_multistep(xt), lif_reference(xt))
    x1 = torch.randn(1, 9) * 3
    assert torch.equal(lif_multistep(x1), lif_reference(x1))
    x1 = torch.randn(6)
    assert torch.equal(lif_multistep(x1), lif_reference(x1))
    xh = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    out = lif_multistep(xh)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert xh.grad is not None and xh.grad.dtype == torch.bfloat16
    assert lif_multistep(torch.empty(0, 3)).shape == (0, 3)
    assert "reference" in available_backends("cpu") and "eager" in available_backends("cpu")


@pytest.mark.skipif(not triton_importable(), reason="triton is not importable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_kernels_under_interpreter(monkeypatch, dtype):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, g = neuron_inputs((3, 2, 700), dtype, seed=2)
    for tau, v_th, v_reset, alpha in LIF_PARAMS[:3]:
        for detach in (True, False):
            args = (tau, v_th, v_reset, alpha, detach)
            check_neuron(lambda x, a=args: lif_multistep(x, *a, backend="triton"),
                         lambda x, a=args: lif_reference(x, *a), x, g)
    x2, g2 = neuron_inputs((3, 1100), dtype, seed=3)
    # q16 keeps the surrogate in 16 bits: gradients within 1e-4 of the loop's (a nonzero output gradient)
    check_neuron(lambda x: lif_multistep(x, backend="triton", saved="q16"), lif_reference, x2, g2, atol=1e-4)
    check_neuron(lambda x: lif_multistep(x, backend="triton", saved="recompute"), lif_reference, x2, g2)
    for form in ("guo", "lif"):
        check_neuron(lambda x, f=form: ternary_multistep(x, f, backend="triton"),
                     lambda x, f=form: ternary_multistep(x, f, backend="reference"), x2, g2)
    assert saved_bytes(lambda x: lif_multistep(x, backend="triton"), x2) == (3 if dtype == torch.float32 else
                                                                              x2.element_size()) * x2.numel()


def _cuda_toolchain_missing() -> str | None:
    """Why Triton cannot build CUDA kernels on this machine (no GPU needed), or None when it can."""
    if not triton_importable():
        return "triton is not importable"
    try:
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401

        tools = (knobs.nvidia.ptxas.path, knobs.nvidia.cuobjdump.path)
    except Exception as exc:  # noqa: BLE001 - any failure here means: no CUDA toolchain in this Triton
        return f"Triton has no CUDA toolchain here ({exc})"
    return None if all(os.path.exists(t) for t in tools) else "Triton's ptxas / cuobjdump are missing"


CUDA_TOOLCHAIN_MISSING = _cuda_toolchain_missing()


@pytest.mark.skipif(CUDA_TOOLCHAIN_MISSING is not None, reason=str(CUDA_TOOLCHAIN_MISSING))
def test_triton_kernels_compile_for_h100():
    """Every variant the library launches on CUDA builds for sm_90 (PTX to cubin, no GPU needed), keeps the charge
    in round-to-nearest multiply and add (no FMA contraction, no flush-to-zero: torch's arithmetic) and spills
    nothing to local memory."""
    from spikformers.kernels import triton as triton_kernels

    kernels = triton_kernels.compile_for_cuda(90)
    assert set(kernels) == set(triton_kernels.cuda_variants()) and len(kernels) == 21
    for name, kernel in kernels.items():
        ptx = kernel.asm["ptx"]
        if name.startswith("forward/"):
            assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx, name
            if triton_kernels.cuda_options():
                assert ".rn.ftz" not in ptx, name
        usage = triton_kernels.cuda_resources(kernel)
        assert usage["local"] == 0 and usage["stack"] == 0 and 0 < usage["registers"] <= 255, (name, usage)


def test_triton_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton"):
        lif_multistep(torch.randn(2, 3), backend="triton")


def _chunks(fn, x, sizes):
    """Run ``fn(x_chunk, v_init=..., return_v=True)`` over consecutive chunks; spikes concatenated, final v."""
    outs, v, t0 = [], None, 0
    for n in sizes:
        out, v = fn(x[t0:t0 + n], v_init=v, return_v=True)
        outs.append(out)
        t0 += n
    return torch.cat(outs), v


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_membrane_carried_between_chunks(backend, dtype):
    x, _ = neuron_inputs((7, 3, 129), dtype, seed=4)
    x = x.detach()
    fns = [lambda x, **kw: lif_multistep(x, 1.7, 0.9, -0.2, 4.0, backend=backend, **kw)]
    fns += [lambda x, f=f, **kw: ternary_multistep(x, f, backend=backend, **kw) for f in ("guo", "lif")]
    refs = [lambda x, **kw: lif_multistep(x, 1.7, 0.9, -0.2, 4.0, backend="reference", **kw)]
    refs += [lambda x, f=f, **kw: ternary_multistep(x, f, backend="reference", **kw) for f in ("guo", "lif")]
    with torch.no_grad():
        for fn, ref in zip(fns, refs):
            full, v_full = ref(x, return_v=True)
            out, v = _chunks(fn, x, (3, 1, 3))
            assert torch.equal(out, full) and torch.equal(fn(x), full)
            torch.testing.assert_close(v.to(dtype), v_full, atol=0, rtol=0)


def test_fused_state_is_inference_only():
    x, _ = neuron_inputs((3, 10), torch.float32)
    with pytest.raises(NotImplementedError, match="no_grad"):
        lif_multistep(x, backend="eager", return_v=True)
    out, v = lif_multistep(x, backend="reference", return_v=True)  # the loop supports it with autograd
    assert v.requires_grad and out.shape == x.shape
    with torch.no_grad(), pytest.raises(ValueError, match="v_init"):
        lif_multistep(x, backend="eager", v_init=torch.zeros(3))


@pytest.mark.skipif(not triton_importable(), reason="triton is not importable")
def test_triton_membrane_carry_under_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, _ = neuron_inputs((5, 1100), torch.float32, seed=5)
    with torch.no_grad():
        for kw in ({}, {"v_reset": -0.2}):
            full, v_full = lif_multistep(x, backend="reference", return_v=True, **kw)
            out, v = _chunks(lambda x, kw=kw, **k: lif_multistep(x, backend="triton", **kw, **k), x, (2, 3))
            assert torch.equal(out, full) and torch.equal(v, v_full)
        for form in ("guo", "lif"):
            full, v_full = ternary_multistep(x, form, backend="reference", return_v=True)
            out, v = _chunks(lambda x, f=form, **k: ternary_multistep(x, f, backend="triton", **k), x, (4, 1))
            assert torch.equal(out, full) and torch.equal(v, v_full)


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("openmp", [True, False])
def test_threaded_kernels_match_reference(monkeypatch, tmp_path, openmp):
    """Shapes large enough to be split over threads, with the OpenMP build and the std::thread build."""
    if openmp and cpp.threading_model != "openmp":
        pytest.skip(f"library built without OpenMP ({cpp.threading_model})")
    if not openmp:
        monkeypatch.setattr(cpp, "threading_model", cpp.threading_model)
        monkeypatch.setenv("SPIKFORMERS_CACHE", str(tmp_path))
        monkeypatch.setattr(cpp, "_lib", cpp._build(openmp=False))
        assert cpp.threading_model == "std::thread"
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        x, g = neuron_inputs((4, 70001), torch.float32, seed=3)  # 280 Ki units of work: two threads or more
        for saved in ("recompute", "q24", "exact"):
            check_neuron(lambda x, s=saved: lif_multistep(x, backend="cpp", saved=s), lif_reference, x, g)
        check_neuron(lambda x: ternary_multistep(x, "lif", backend="cpp"), ternary_lif_reference, x, g)
        check_neuron(lambda x: ternary_multistep(x, "guo", backend="cpp"), ternary_reference, x, g)
    finally:
        torch.set_num_threads(threads)
    if openmp:  # the kernels' OpenMP calls land in the runtime torch loaded, not a second copy
        gomp = cpp.libgomp_path()
        assert gomp is not None
        torch_symbol = ctypes.cast(ctypes.CDLL(gomp).omp_get_max_threads, ctypes.c_void_p).value
        assert cpp.library().spk_openmp_symbol() == torch_symbol


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("kind", ["lif", "ternary_lif", "ternary_guo"])
def test_scratch_input_is_overwritten_only_when_marked(kind):
    from spikformers.kernels import mark_scratch

    def run(x):
        if kind == "lif":
            return lif_multistep(x, backend="cpp")
        return ternary_multistep(x, "lif" if kind == "ternary_lif" else "guo", backend="cpp")

    x = torch.randn(4, 3, 700) * 2
    keep = x.clone()
    with torch.no_grad():
        want = run(x)
        assert torch.equal(x, keep)  # unmarked: left alone
        got = run(mark_scratch(x))
    assert torch.equal(got, want) and got.data_ptr() == x.data_ptr()  # marked: spikes written over it
    y = torch.randn(4, 3, 700, requires_grad=True)
    y_keep = y.detach().clone()
    run(mark_scratch(y)).sum().backward()  # with autograd the mark is ignored: backward needs the input
    assert torch.equal(y.detach(), y_keep)
    z = torch.randn(4, 3, 700)
    mark_scratch(z)
    with torch.no_grad():
        run(torch.randn(4, 3, 700))  # the mark is spent by the next call, whatever its input
        z_keep = z.clone()
        run(z)
    assert torch.equal(z, z_keep)


def test_units_write_spikes_over_their_norm_output_with_identical_logits(monkeypatch):
    from spikformers import create_model
    from spikformers.kernels import dispatch, kernel_config

    model = create_model("spikformer_2_64_cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    taken = []
    real = dispatch._take_scratch
    monkeypatch.setattr(dispatch, "_take_scratch", lambda t: taken.append(real(t)) or taken[-1])
    with kernel_config(fused_bn_neuron=False), torch.no_grad():  # the separate norm + neuron path: fused units
        with_scratch = model(x)  # never have a scratch input
    assert any(taken)
    kept = {}
    bn = model.blocks[0].mlp.fc1.bn  # a hook that keeps a unit's norm output must see it intact when switched off
    handle = bn.register_forward_hook(lambda m, a, y: kept.setdefault("y", y))
    try:
        with kernel_config(fused_bn_neuron=False, overwrite_scratch=False), torch.no_grad():
            without = model(x)
    finally:
        handle.remove()
    assert torch.equal(with_scratch, without)
    assert not torch.all((kept["y"] == 0) | (kept["y"] == 1))  # the norm's output, not spikes
