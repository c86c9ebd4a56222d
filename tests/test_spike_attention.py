"""The event-driven CPU attention product (csrc/attention.cpp): same numbers as the dense product, no head copies,
and the dense path wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from spikformers.attention.base import attention_product, merge_heads, split_heads
from spikformers.energy.counter import OpCounter
from spikformers.kernels import cpp, kernel_config, spike_ops

pytestmark = pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")


def heads(shape, H, rate, dtype=torch.float32, seed=0, values=(1.0,)):
    """Three head splits ``[T, B, H, N, d]`` of contiguous spike tensors ``[T, B, N, H * d]`` (leaves with grad)."""
    gen = torch.Generator().manual_seed(seed)
    T, B, N, C = shape
    leaves = []
    for _ in range(3):
        fired = torch.rand(T, B, N, C, generator=gen) < rate
        pick = torch.randint(0, len(values), (T, B, N, C), generator=gen)
        leaves.append((fired * torch.tensor(values)[pick]).to(dtype).requires_grad_())
    return leaves, [split_heads(x, H) for x in leaves]


def dense(leaves, H):
    q, k, v = (split_heads(x.detach().clone().requires_grad_(), H) for x in leaves)
    return q @ (k.transpose(-2, -1) @ v), (q, k, v)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape,H,rate", [((2, 3, 10, 32), 4, 0.3), ((4, 2, 16, 96), 3, 0.1),
                                          ((1, 2, 5, 128), 2, 0.6), ((2, 1, 9, 72), 3, 0.95)])
def test_matches_dense_product(dtype, atol, shape, H, rate):
    leaves, (q, k, v) = heads(shape, H, rate, dtype)
    out = attention_product(q, k, v, "kv_first")
    assert type(out.grad_fn).__name__ == "_SpikeAttentionBackward"
    ref, ref_in = dense(leaves, H)
    assert torch.equal(out, ref)  # sums of spikes are integers: exact
    g = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b.transpose(2, 3).reshape(a.shape), atol=atol * scale, rtol=0)


def test_no_head_copies_and_only_bits_saved():
    leaves, (q, k, v) = heads((4, 8, 64, 384), 12, 0.15)
    out = attention_product(q, k, v, "kv_first")
    assert merge_heads(out).data_ptr() == out.data_ptr()  # merging the heads is a view

    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        attention_product(q, k, v, "kv_first")
    assert [t.dtype for t in saved] == [torch.uint8] * 3
    assert sum(t.numel() for t in saved) == 3 * leaves[0].numel() // 8

    grads = torch.autograd.grad(out, q, torch.ones_like(out))  # q only: k's and v's are not built
    assert grads[0].shape == q.shape


def test_only_needed_gradients(monkeypatch):
    seen = []
    real = cpp.spike_attention_backward
    monkeypatch.setattr(cpp, "spike_attention_backward", lambda *a: seen.append(a[-1]) or real(*a))
    leaves, (q, k, v) = heads((2, 2, 8, 16), 2, 0.4)
    out = attention_product(q.detach(), k, v, "kv_first")
    out.sum().backward()
    assert seen == [(False, True, True)] and leaves[0].grad is None and leaves[1].grad is not None


@pytest.mark.parametrize("case", ["counts", "ternary", "head_size_12", "contiguous_heads", "sparse_off", "counter",
                                  "autocast"])
def test_dense_path_where_it_does_not_apply(case):
    values = {"counts": (1.0, 2.0), "ternary": (1.0, -1.0)}.get(case, (1.0,))
    C, H = (48, 4) if case == "head_size_12" else (64, 4)
    leaves, (q, k, v) = heads((2, 3, 10, C), H, 0.3, values=values)
    if case == "contiguous_heads":
        q, k, v = (t.contiguous() for t in (q, k, v))
    with kernel_config(event_driven=case != "sparse_off"):
        if case == "counter":
            with OpCounter(torch.nn.Identity()):
                assert spike_ops.spike_attention(q, k, v) is None
        elif case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert spike_ops.spike_attention(q, k, v) is None
        else:
            assert spike_ops.spike_attention(q, k, v) is None
            out = attention_product(q, k, v, "kv_first")
            ref, _ = dense(leaves, H)
            assert type(out.grad_fn).__name__ != "_SpikeAttentionBackward" and torch.equal(out, ref)


def test_spikformer_training_step_takes_it(monkeypatch):
    from spikformers import create_model

    calls = []
    real = cpp.spike_attention
    monkeypatch.setattr(cpp, "spike_attention", lambda *a: calls.append(a[-2]) or real(*a))
    torch.manual_seed(0)
    model = create_model("spikformer_4_384_cifar", depth=1)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert calls and calls[0][2:] == (12, 32)
