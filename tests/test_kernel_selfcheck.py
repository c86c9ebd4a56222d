"""The Triton kernels' self-check: a variant that computes wrong numbers or raises is caught on its first call, warned
about once, and replaced by the eager path; a correct one passes and runs. And ``spikformers doctor``.

Runs on a CPU: the Triton kernels go through Triton's interpreter (``TRITON_INTERPRET=1``, set per test as in
``test_kernels.py``); the broken kernels are the real ones with their output spoiled by monkeypatching.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from helpers import neuron_inputs
from spikformers.cli import main
from spikformers.kernels import (
    cpp,
    kernel_config,
    lif_multistep,
    lif_reference,
    selfcheck,
    set_kernel_config,
    ternary_multistep,
)
from spikformers.kernels.common import triton_importable
from spikformers.kernels.selfcheck import KernelCheckWarning

needs_triton = pytest.mark.skipif(not triton_importable(), reason="triton is not importable")


@pytest.fixture
def fresh(monkeypatch):
    """No check outcome from earlier tests, the check on, whatever the environment says."""
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    selfcheck.clear_results()
    with kernel_config(kernel_check=None):
        yield
    selfcheck.clear_results()


@pytest.fixture
def triton_kernels(monkeypatch, fresh):
    """The Triton module, run by the interpreter, with its launches counted in ``triton_kernels.calls``."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from spikformers.kernels import triton as triton_kernels

    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(triton_kernels, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_kernels, name, counted)
    monkeypatch.setattr(triton_kernels, "calls", calls, raising=False)
    return triton_kernels


def flip_first_spike(monkeypatch, triton_kernels) -> None:
    """Make the Triton forward return its spikes with the first one flipped."""
    real = triton_kernels.forward

    def forward(x, *args, **kwargs):
        out, state = real(x, *args, **kwargs)
        out.view(-1)[0] = 1 - out.view(-1)[0]
        return out, state

    monkeypatch.setattr(triton_kernels, "forward", forward)


def run_lif(x: torch.Tensor, g: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and input gradient of the Triton LIF."""
    out = lif_multistep(x, backend="triton", **kwargs)
    return out, torch.autograd.grad(out, x, g)[0]


def reference(x: torch.Tensor, g: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    out = lif_reference(x, **kwargs)
    return out, torch.autograd.grad(out, x, g)[0]


def no_warning(fn):  # type: ignore[no-untyped-def]
    """Call ``fn()`` and fail on any KernelCheckWarning it gives; returns its result."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = fn()
    assert not [w for w in seen if issubclass(w.category, KernelCheckWarning)], [str(w.message) for w in seen]
    return result


@needs_triton
def test_a_correct_kernel_passes_and_is_used(triton_kernels):
    x, g = neuron_inputs((4, 2, 350), torch.float32)
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, gx = no_warning(lambda: run_lif(x, g))
    assert triton_kernels.calls == {"forward": 2, "backward": 2}  # the check's launches and the call's own
    assert [t.dtype for t in saved] == [torch.uint8]  # the caller's hooks see the call's q24 state, not the check's
    out_ref, g_ref = reference(x, g)
    assert torch.equal(out, out_ref)
    torch.testing.assert_close(gx, g_ref, atol=1e-6, rtol=1e-6)
    (key, result), = selfcheck.results().items()
    assert result.ok and key.backend == "triton" and (key.kind, key.save, key.dtype) == ("lif", "q24", "float32")
    no_warning(lambda: run_lif(x, g))
    assert triton_kernels.calls["forward"] == 3 and len(selfcheck.results()) == 1  # checked once, then launched


@needs_triton
def test_a_flipped_spike_is_caught_once_and_the_call_falls_back_to_eager(monkeypatch, triton_kernels):
    flip_first_spike(monkeypatch, triton_kernels)
    x, g = neuron_inputs((4, 2, 350), torch.float32, seed=1)
    out_ref, g_ref = reference(x, g)
    with pytest.warns(KernelCheckWarning) as caught:
        out, gx = run_lif(x, g)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Triton lif kernel (forward+backward, saved q24; reset detached" in message
    assert "float32 on cpu" in message and "spikes differ" in message and "max abs diff 1" in message
    assert torch.equal(out, out_ref)  # this very call already took the eager path
    torch.testing.assert_close(gx, g_ref, atol=1e-6, rtol=1e-6)
    launches = triton_kernels.calls["forward"]
    out2, gx2 = no_warning(lambda: run_lif(x, g))  # later calls: no second warning, still eager
    assert torch.equal(out2, out_ref) and triton_kernels.calls["forward"] == launches
    with pytest.warns(KernelCheckWarning, match="reset attached"):  # another key is checked on its own
        assert torch.equal(run_lif(x, g, detach_reset=False)[0], lif_reference(x, detach_reset=False))


@needs_triton
@pytest.mark.parametrize("form", ["lif", "ternary_lif", "ternary_guo"])
def test_a_zero_gradient_is_caught_and_inference_still_uses_triton(monkeypatch, triton_kernels, form):
    monkeypatch.setattr(triton_kernels, "backward", lambda grad, *args: torch.zeros_like(grad))

    def run(x):
        if form == "lif":
            return lif_multistep(x, backend="triton")
        return ternary_multistep(x, form.split("_")[1], backend="triton")

    def ref(x):
        if form == "lif":
            return lif_reference(x)
        return ternary_multistep(x, form.split("_")[1], backend="reference")

    x, g = neuron_inputs((4, 300), torch.float32, seed=2)
    with pytest.warns(KernelCheckWarning, match=rf"Triton {form} kernel .*input gradients differ .*max abs diff") as w:
        (gx,) = torch.autograd.grad(run(x), x, g)
    assert len(w) == 1
    (g_ref,) = torch.autograd.grad(ref(x), x, g)
    torch.testing.assert_close(gx, g_ref, atol=1e-6, rtol=1e-6)
    launches = triton_kernels.calls["forward"]
    with torch.no_grad():  # the forward-only variant is another key: it passes and runs on Triton
        assert torch.equal(no_warning(lambda: run(x)), ref(x))
    assert triton_kernels.calls["forward"] == launches + 2


@needs_triton
def test_a_kernel_that_raises_falls_back(monkeypatch, triton_kernels):
    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("ptxas fatal: simulated compile error")

    monkeypatch.setattr(triton_kernels, "_kernels", lambda interpret: (Broken(), Broken()))
    x, g = neuron_inputs((4, 3, 100), torch.float32, seed=3)
    with torch.no_grad():
        with pytest.warns(KernelCheckWarning, match="raised RuntimeError: ptxas fatal: simulated compile error"):
            out = lif_multistep(x, backend="triton", return_v=True)
        ref = lif_reference(x, return_v=True)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        assert torch.equal(no_warning(lambda: lif_multistep(x, backend="triton", return_v=True))[0], ref[0])
    (key, result), = selfcheck.results().items()
    assert not result.ok and key.return_v and not key.v_init and key.save == "none"


@needs_triton
def test_the_check_can_be_switched_off(monkeypatch, triton_kernels):
    flip_first_spike(monkeypatch, triton_kernels)
    x, g = neuron_inputs((4, 320), torch.float32, seed=4)
    monkeypatch.setenv(selfcheck.ENV, "0")
    with torch.no_grad():
        out = no_warning(lambda: lif_multistep(x, backend="triton"))
        assert not torch.equal(out, lif_reference(x))  # unchecked: the broken kernel's numbers go through
        assert set_kernel_config(kernel_check=True).kernel_check is None  # the switch wins over the environment
        with pytest.warns(KernelCheckWarning):
            assert torch.equal(lif_multistep(x, backend="triton"), lif_reference(x))
        selfcheck.clear_results()
        set_kernel_config(kernel_check=False)
        monkeypatch.delenv(selfcheck.ENV)
        assert not torch.equal(no_warning(lambda: lif_multistep(x, backend="triton")), lif_reference(x))
    assert not selfcheck.results()


@needs_triton
def test_each_variant_is_checked_under_its_own_key(triton_kernels):
    x, g = neuron_inputs((4, 2, 160), torch.float32, seed=5)
    run_lif(x, g)
    run_lif(x, g, saved="q16")
    run_lif(x, g, detach_reset=False)
    run_lif(x.detach().double().requires_grad_(), g.double())
    run_lif(x, g)  # already checked
    with torch.no_grad():
        lif_multistep(x, backend="triton")
        lif_multistep(x, backend="triton", v_init=torch.zeros(2, 160), return_v=True)
        lif_multistep(x[:1], backend="triton")  # T = 1: Triton compiles it apart
        lif_multistep(torch.randn(4, 300), backend="triton")  # N not divisible by 16
        lif_multistep(torch.randn(1201)[1:].view(4, 300), backend="triton")  # at an address not divisible by 16
    keys = selfcheck.results()
    assert all(r.ok for r in keys.values())
    found = {(k.dtype, k.save, k.detach_reset, k.v_init, k.return_v, k.T, k.N, k.aligned) for k in keys}
    assert found == {
        ("float32", "q24", True, False, False, "any", "16", True),
        ("float32", "q16", True, False, False, "any", "16", True),
        ("float32", "exact", False, False, False, "any", "16", True),
        ("float64", "exact", True, False, False, "any", "16", True),
        ("float32", "none", True, False, False, "any", "16", True),
        ("float32", "none", True, True, True, "any", "16", True),
        ("float32", "none", True, False, False, "1", "16", True),
        ("float32", "none", True, False, False, "any", "any", True),
        ("float32", "none", True, False, False, "any", "any", False),
    }


@needs_triton
def test_inputs_past_32_bit_indices_take_the_eager_path(monkeypatch, triton_kernels):
    monkeypatch.setattr(selfcheck, "INDEX_LIMIT", 2000)  # stands for 2**31: 3 planes x 4 x 300 > 2000
    assert selfcheck.index_overflows(4, 300, "q24") and not selfcheck.index_overflows(4, 300, "exact")
    x, g = neuron_inputs((4, 300), torch.float32, seed=6)
    with pytest.warns(KernelCheckWarning, match="overflow its 32-bit indices"):
        out, gx = run_lif(x, g)
    out_ref, g_ref = reference(x, g)
    assert torch.equal(out, out_ref) and triton_kernels.calls["forward"] == 0
    no_warning(lambda: run_lif(x, g))
    assert triton_kernels.calls["forward"] == 0
    run_lif(x, g, saved="exact")  # one plane of 1200 indices fits
    assert triton_kernels.calls["forward"] == 2


@pytest.mark.parametrize("kind", ["lif", "ternary_lif", "ternary_guo"])
def test_the_check_input_fires_and_carries_gradient(kind):
    """Every spike value occurs in the check (a kernel that never or always fires cannot pass it) and most input
    gradients are far from zero (a kernel returning zeros cannot pass it)."""
    for T, N in (("any", "16"), ("16", "any")):
        key = selfcheck.KernelKey("eager", "cpu", "float32", kind, "exact", True, False, False, T, N, True)
        x, _, g, p = selfcheck.check_inputs(key)
        x.requires_grad_()
        spikes = selfcheck.run_reference(kind, p, x, None)[0]
        values = {-1.0, 0.0, 1.0} if kind != "lif" else {0.0, 1.0}
        assert set(spikes.unique().tolist()) == values
        for t in range(spikes.shape[0]):  # every step has some of each
            assert set(spikes[t].unique().tolist()) == values
        (gx,) = torch.autograd.grad(spikes, x, g)
        assert (gx.abs() > 100 * selfcheck.tolerance(torch.float32, kind, "q16", p.alpha)).float().mean() > 0.25


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_doctor_on_this_machine(capsys, fresh):
    assert main(["doctor", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert last_line(out).startswith("all checks passed (")
    for label in ("python", "torch", "cuda devices" if not torch.cuda.is_available() else "cuda:0", "c++ compiler",
                  "openmp", "cpu isa", "cpu kernels", "triton kernels"):
        assert re.search(rf"^  {re.escape(label)} +\S", out, re.M), label
    assert re.search(r"^  eager +cpu +float64 +21 +21 ", out, re.M)
    if cpp.available():
        assert re.search(r"^  cpp +cpu +float32 +21 +21 ", out, re.M)
    if not torch.cuda.is_available() and triton_importable():
        assert "no CUDA device: Triton kernels not checked" in out


def test_doctor_reports_a_broken_cpu_kernel(monkeypatch, capsys, fresh):
    if not cpp.available():
        pytest.skip(f"C++ kernels unavailable: {cpp.error}")
    monkeypatch.setattr(cpp, "backward", lambda grad, *args: torch.zeros_like(grad))
    assert main(["doctor", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^  cpp +cpu +float32 +21 +9 ", out, re.M)  # only the forward-only variants pass
    assert re.match(r"24 problems: C\+\+ lif kernel \(forward\+backward, saved q24; reset detached, .*float32 on cpu\)"
                    r": input gradients differ .*; and 21 more \(listed above\)$", last_line(out))


@needs_triton
def test_doctor_checks_triton_under_the_interpreter(monkeypatch, capsys, triton_kernels):
    if torch.cuda.is_available():
        pytest.skip("with a CUDA device the doctor checks Triton there")
    assert main(["doctor", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "checked under Triton's interpreter" in out and re.search(r"^  triton +cpu +float32 +21 +21 ", out, re.M)
    flip_first_spike(monkeypatch, triton_kernels)
    assert main(["doctor", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^  triton +cpu +float32 +21 +0 ", out, re.M)
    assert re.match(r"21 problems: Triton lif kernel .*spikes differ", last_line(out))


@needs_triton
def test_doctor_compiles_triton_for_a_gpu_it_does_not_have(monkeypatch, capsys, fresh):
    if torch.cuda.is_available():
        pytest.skip("with a CUDA device the doctor builds the kernels there")
    from spikformers.kernels import triton as triton_kernels

    variants = triton_kernels.cuda_variants()
    monkeypatch.setattr(triton_kernels, "cuda_variants", lambda: {k: variants[k] for k in ("forward/lif/q24",
                                                                                 "backward/lif/q24")})
    real = triton_kernels.compile_for_cuda

    def compile_for_cuda(arch, names):
        if names == ["backward/lif/q24"]:
            raise RuntimeError("PTX .version 9.9 does not support .target sm_12 (simulated)")
        return real(arch, names)

    monkeypatch.setattr(triton_kernels, "compile_for_cuda", compile_for_cuda)
    rc = main(["doctor", "--cuda-arch", "90"])
    out = capsys.readouterr().out
    if "not compiled:" in out:
        pytest.skip("this Triton has no CUDA toolchain")
    assert rc == 1 and "1/2 variants compiled for sm_90" in out
    assert last_line(out).startswith("1 problem: Triton kernel backward/lif/q24 does not compile for sm_90: PTX")
