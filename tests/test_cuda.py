"""The GPU paths on a CUDA device: the Triton neuron kernels against the reference loops run on the same device,
membranes carried between chunks bit for bit (denormals included), and whole models with and without AMP.

Skipped without a CUDA device. None was at hand when these were written: they run whenever the machine
running the suite has one (``benchmarks/README.md`` lists the GPU checks to run then).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import spikformers
from helpers import check_neuron, neuron_inputs
from spikformers.kernels import lif_multistep, lif_reference, select_impl, ternary_multistep
from spikformers.memory import chunked_forward
from spikformers.neurons import configure_neurons

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

LIF_PARAMS = [(2.0, 1.0, 0.0, 4.0), (1.7, 0.8, -0.3, 4.0), (3.3, 1.2, 0.2, 5.0)]


def test_auto_backend_is_triton_on_cuda():
    x = torch.zeros(2, 3, device="cuda")
    assert select_impl(x, "auto").__name__.endswith(".triton")
    assert select_impl(x.double(), "auto").__name__.endswith(".eager")  # float64 on CUDA: eager torch


@pytest.mark.parametrize("saved", ["auto", "exact", "recompute", "q16"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("params", LIF_PARAMS)
def test_triton_lif_matches_reference_on_cuda(params, detach_reset, saved):
    tau, v_th, v_reset, alpha = params
    x, g = neuron_inputs((6, 4, 1000), torch.float32, seed=7, device="cuda")
    lif = dict(tau=tau, v_th=v_th, v_reset=v_reset, alpha=alpha, detach_reset=detach_reset)
    check_neuron(lambda x: lif_multistep(x, **lif, backend="triton", saved=saved),
                 lambda x: lif_reference(x, **lif), x, g, atol=5e-5 if saved == "q16" and detach_reset else 1e-6)


@pytest.mark.parametrize("form", ["guo", "lif"])
def test_triton_ternary_matches_reference_on_cuda(form):
    x, g = neuron_inputs((5, 3, 1100), torch.float32, seed=8, device="cuda")
    check_neuron(lambda x: ternary_multistep(x, form, backend="triton"),
                 lambda x: ternary_multistep(x, form, backend="reference"), x, g)


def test_triton_half_inputs_on_cuda():
    """bf16 / fp16 inputs (AMP) compute in float32 and come back in their own dtype: the reference loop run on the
    float32 input, rounded. (The reference on the half input itself computes in half and flips some spikes.)"""
    for dtype in (torch.bfloat16, torch.float16):
        x, g = neuron_inputs((4, 2, 2048), dtype, seed=9, device="cuda")
        out = lif_multistep(x, backend="triton")
        xf = x.detach().float().requires_grad_()
        ref = lif_reference(xf)
        assert out.dtype == dtype and torch.equal(out, ref.to(dtype))
        (gx,) = torch.autograd.grad(out, x, g)
        (gf,) = torch.autograd.grad(ref, xf, g.float())
        assert gx.dtype == dtype
        torch.testing.assert_close(gx.float(), gf.to(dtype).float(), atol=1e-2, rtol=1e-2)


def test_triton_membrane_carry_keeps_denormals_on_cuda():
    """Chunked inference carries the membrane bit for bit, including values below float32's smallest normal
    (1.2e-38), which torch's CUDA ops keep and a flush-to-zero build of the kernel would make 0."""
    from spikformers.kernels import triton as triton_kernels

    if not triton_kernels.cuda_options():
        pytest.skip("this Triton has no enable_reflect_ftz option: its libdevice flushes denormals to 0")
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(6, 4096, generator=gen).cuda()
    x[:, :2048] *= 1e-39  # denormal inputs: the membranes of these neurons stay denormal
    with torch.no_grad():
        full, v_full = lif_multistep(x, backend="reference", return_v=True)
        out_a, v_a = lif_multistep(x[:4], backend="triton", return_v=True)
        out_b, v_b = lif_multistep(x[4:], backend="triton", v_init=v_a, return_v=True)
    assert (v_full[:2048] != 0).any() and (v_full[:2048].abs() < torch.finfo(torch.float32).tiny).all()
    assert torch.equal(torch.cat([out_a, out_b]), full) and torch.equal(v_b, v_full)


def _logits_and_grads(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None = None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
        out = model(x)
    out.float().square().mean().backward()
    return out.detach().float(), [p.grad.detach() for p in model.parameters() if p.grad is not None]


def test_model_on_cuda_matches_the_reference_neuron():
    """A whole model on CUDA: Triton neurons give the reference loop's logits exactly (the CPU-only fused units and
    event-driven layers do not apply there, so the neurons are the only difference), and gradients within float
    noise."""
    torch.manual_seed(0)
    model = spikformers.create_model("spikformer_2_64_cifar").cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    out, grads = _logits_and_grads(model, x)
    configure_neurons(model, backend="reference")
    out_ref, grads_ref = _logits_and_grads(model, x)
    assert torch.isfinite(out).all() and torch.equal(out, out_ref)
    assert len(grads) == len(grads_ref) == len(list(model.parameters()))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_model_under_amp_on_cuda(amp):
    """Forward and backward under autocast: finite logits and float32 parameter gradients, Triton neurons."""
    torch.manual_seed(0)
    model = spikformers.create_model("spikformer_2_64_cifar").cuda()
    out, grads = _logits_and_grads(model, torch.randn(8, 3, 32, 32, device="cuda"), amp)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert select_impl(torch.zeros(1, device="cuda", dtype=amp), "auto").__name__.endswith(".triton")


def test_chunked_forward_on_cuda():
    model = spikformers.create_model("spikformer_2_64_cifar").cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert torch.equal(chunked_forward(model, x, 2), model(x))
