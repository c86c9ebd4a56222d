"""Memory savers change no numbers: compact spike inputs, per-block checkpointing, T-chunked inference."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from helpers import check_checkpointing_saves_less, saved_bytes
from spikformers import create_model, layers
from spikformers.attention.psa import PSA
from spikformers.kernels import cpp, kernel_config, spike_ops
from spikformers.memory import backbone_blocks, chunked_forward, recompute_bn_neurons
from spikformers.models.hst import HST
from spikformers.models.spikformer import Spikformer
from spikformers.neurons import LIF, TernaryNeuron
from spikformers.neurons.state import carry_membrane, current_store

TOL = {"atol": 1e-6, "rtol": 1e-6}
BACKENDS = ["reference", "eager", pytest.param("cpp", marks=pytest.mark.skipif(not cpp.available(),
                                                                                reason="no C++ kernels"))]


@pytest.fixture
def separate_units():
    """Each unit's batch norm and neuron as separate modules (fused units keep only their input already)."""
    with kernel_config(fused_bn_neuron=False):
        yield


def spikformer(seed: int = 0, **kw) -> Spikformer:
    torch.manual_seed(seed)
    return Spikformer(**{"img_size": 16, "dim": 64, "depth": 2, "heads": 4, "T": 4, **kw})


def hst(seed: int = 0) -> HST:
    torch.manual_seed(seed)
    return HST(img_size=16, dim=64, depth=4, heads=4, T=3)


def set_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, (LIF, TernaryNeuron)):
            m.backend = backend
    return model


def grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 7), (3, 2, 4, 6)])
def test_pack_roundtrip(shape):
    gen = torch.Generator().manual_seed(0)
    binary = (torch.rand(shape, generator=gen) > 0.6).float()
    counts = torch.randint(0, 40, shape, generator=gen).double()
    real = torch.randn(shape, generator=gen)
    for x, form in ((binary, "bits"), (counts, "u8"), (real, "raw"), (-binary, "raw"), (binary * 0.5, "raw"),
                    (binary.transpose(0, -1), "bits")):
        p = spike_ops.pack_exact(x)
        assert p.form == form
        assert torch.equal(spike_ops.unpack_exact(p.data, p.form, p.shape, p.dtype), x)
    p = spike_ops.pack_exact(binary)
    assert p.data.numel() == -(-binary.numel() // 8)
    assert spike_ops.pack_exact(binary).data is p.data  # shared between calls on the same tensor


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("n", [1, 7, 8, 513, 4096 + 3, 300_001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_bit_packing_matches_torch(monkeypatch, n, dtype):
    gen = torch.Generator().manual_seed(n)
    x = (torch.rand(n, generator=gen) > 0.7).to(dtype)
    fast = spike_ops.pack_exact(x)
    assert fast.form == "bits" and torch.equal(spike_ops.unpack_exact(*fast[:4]), x)
    monkeypatch.setattr(spike_ops, "_fast", lambda dtype, device: False)
    slow = spike_ops.pack_exact(x.clone())
    assert torch.equal(fast.data, slow.data)  # same bit layout, so either side can unpack the other's
    monkeypatch.undo()
    for bad in (0, n // 2, n - 1):  # one value that is not 0/1 anywhere: never packed as bits
        y = x.clone()
        y[bad] = 2.0
        assert cpp.pack_bits(y) is None and spike_ops.pack_exact(y).form == "u8"
        y[bad] = float("nan")
        assert spike_ops.pack_exact(y).form == "raw"


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("n", [1, 31, 32, 33, 513, 4096 + 7, 300_001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_byte_packing_counts_events_and_refuses_what_does_not_fit(n, dtype):
    """Bytes hold integers 0-255 exactly and the count is of the non-zero ones (the events); any value that is not
    such an integer, wherever it sits in the vectorised blocks or the tail, makes packing refuse."""
    gen = torch.Generator().manual_seed(n)
    x = ((torch.rand(n, generator=gen) < 0.3) * torch.randint(1, 256, (n,), generator=gen)).to(dtype)
    x[-1] = 255.0
    data, events = cpp.pack_u8(x)
    assert torch.equal(data, x.to(torch.uint8)) and events == int((x != 0).sum())
    assert cpp.pack_u8(-x * 0.0) is not None  # -0.0 is zero
    for bad in {0, n // 2, n - 1}:
        for value in (256.0, -1.0, 0.5, float("nan"), float("inf"), 1e10):
            y = x.clone()
            y[bad] = value
            assert cpp.pack_u8(y) is None, (bad, value)


def _spikes(shape, seed=0, scale=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 * scale, shape, generator=gen).float().requires_grad_()


@pytest.mark.parametrize("scale", [1, 3])
def test_compact_ops_match_plain(scale):
    x = _spikes((3, 5, 7, 12), scale=scale)
    w, b = torch.randn(6, 12, requires_grad=True), torch.randn(6, requires_grad=True)
    xc = _spikes((4, 3, 9, 9), seed=1, scale=scale)
    wc, bc = torch.randn(5, 3, 3, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    a, m = _spikes((2, 3, 7, 5), seed=2, scale=scale), _spikes((2, 3, 5, 4), seed=3, scale=scale)
    cases = [
        (lambda: spike_ops.spike_linear(x, w, b), lambda: F.linear(x, w, b), (x, w, b)),
        (lambda: spike_ops.spike_conv2d(xc, wc, bc, 2, 1), lambda: F.conv2d(xc, wc, bc, 2, 1), (xc, wc, bc)),
        (lambda: spike_ops.spike_conv2d(xc, wc, None, 1, 1), lambda: F.conv2d(xc, wc, None, 1, 1), (xc, wc)),
        (lambda: spike_ops.spike_matmul(a, m), lambda: a @ m, (a, m)),
        (lambda: layers.max_pool(xc[None]), lambda: F.max_pool2d(xc, 3, 2, 1)[None], (xc,)),
    ]
    for compact, plain, inputs in cases:
        y1, y2 = compact(), plain()
        assert torch.equal(y1, y2)
        g = torch.randn_like(y1)
        for g1, g2 in zip(torch.autograd.grad(y1, inputs, g), torch.autograd.grad(y2, inputs, g)):
            torch.testing.assert_close(g1, g2, **TOL)
    assert saved_bytes(lambda: spike_ops.spike_linear(x, w, b)) < saved_bytes(lambda: F.linear(x, w, b))


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("K,N", [(16, 70), (64, 128), (40, 3)])
def test_event_driven_linear_matches_dense(monkeypatch, dtype, atol, K, N):
    calls = []
    for name in ("sparse_linear", "sparse_linear_wgrad"):
        real = getattr(cpp, name)
        monkeypatch.setattr(cpp, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    gen = torch.Generator().manual_seed(K * N)
    w = torch.randn(N, K, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(N, generator=gen, dtype=dtype, requires_grad=True)
    both, forward = ["sparse_linear", "sparse_linear_wgrad"], ["sparse_linear"]
    # (rate, kernels expected, largest count, weight-gradient threshold, rows per step); top > 1: spike counts (a
    # residual stream), kept as bytes; a lower weight-gradient threshold gives an event-driven forward and a dense
    # weight gradient; 700 rows per step: the weight gradient takes its rows in several blocks
    wgrad_max = spike_ops.SPARSE_WGRAD_MAX_RATE
    cases = ((0.02, both, 1, wgrad_max, 50), (0.1, both, 1, wgrad_max, 50), (0.05, both, 4, wgrad_max, 50),
             (0.25, both, 3, wgrad_max, 700), (0.25, forward, 1, 0.2, 50), (0.25, forward, 3, 0.2, 50),
             (0.5, [], 1, wgrad_max, 50), (0.5, [], 3, wgrad_max, 50))
    for rate, expected, top, wgrad_rate, rows in cases:
        calls.clear()
        monkeypatch.setattr(spike_ops, "SPARSE_WGRAD_MAX_RATE", wgrad_rate)
        x = (torch.rand(3, rows, K, generator=gen) < rate) * torch.randint(1, top + 1, (3, rows, K), generator=gen)
        x = x.to(dtype).requires_grad_()
        y = spike_ops.spike_linear(x, w, b)
        g = torch.randn(y.shape, generator=gen, dtype=dtype)
        got = torch.autograd.grad(y, (x, w, b), g)
        want = torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)
        torch.testing.assert_close(y, F.linear(x, w, b), atol=atol, rtol=0)
        for a, e in zip(got, want):  # sums over up to 2100 rows: float32 rounding grows with their size
            torch.testing.assert_close(a, e, atol=atol * 10, rtol=1e-5 if dtype == torch.float32 else 0)
        assert calls == expected, (rate, top)
        with torch.no_grad():  # inference takes the same path
            calls.clear()
            torch.testing.assert_close(spike_ops.spike_linear(x, w, b), F.linear(x, w, b), atol=atol, rtol=0)
            assert calls == expected[:1]
    with kernel_config(event_driven=False):
        calls.clear()
        x = (torch.rand(3, 50, K, generator=gen) < 0.02).to(dtype).requires_grad_()
        assert torch.equal(spike_ops.spike_linear(x, w, b), F.linear(x, w, b)) and not calls


def test_event_driven_input_gradient_product(monkeypatch):
    """The event-driven linear's input gradient (oneDNN's 1x1 transposed conv on a channels-last view for float32 CPU)
    equals ``g @ weight`` to float rounding and keeps the batch shape; float64 or strided operands, or oneDNN
    switched off, take ``matmul`` itself."""
    calls = []
    real = F.conv_transpose2d
    monkeypatch.setattr(spike_ops.F, "conv_transpose2d", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(3)
    for shape, K in (((4, 2, 64, 384), 96), ((700, 48), 200), ((3, 16), 1)):
        g, w = torch.randn(shape, generator=gen), torch.randn(shape[-1], K, generator=gen) / shape[-1] ** 0.5
        got = spike_ops._input_grad(g, w)
        assert got.shape == (*shape[:-1], K) and got.is_contiguous()
        torch.testing.assert_close(got, g @ w, atol=1e-5, rtol=1e-5)
    assert len(calls) == 3
    g, w = torch.randn(40, 24, generator=gen), torch.randn(24, 8, generator=gen)
    for g_other, w_other in ((g.double(), w.double()), (g.t().contiguous().t(), w), (g, w.t().contiguous().t())):
        assert torch.equal(spike_ops._input_grad(g_other, w_other), g_other.matmul(w_other))
    assert spike_ops._input_grad(torch.empty(0, 24), w).shape == (0, 8)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert torch.equal(spike_ops._input_grad(g, w), g.matmul(w))
    assert len(calls) == 3  # none of the calls after the first three went through oneDNN


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_event_driven_conv_matches_dense(monkeypatch, dtype, atol, with_bias):
    calls = []
    for name in ("sparse_conv3x3", "sparse_conv3x3_wgrad"):
        real = getattr(cpp, name)
        monkeypatch.setattr(cpp, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    gen = torch.Generator().manual_seed(7 + with_bias)
    B, Cin, Cout, H, W = 3, 5, 70, 7, 9  # odd sizes: 63 pixels a plane, a partial tile of output channels
    w = torch.randn(Cout, Cin, 3, 3, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(Cout, generator=gen, dtype=dtype, requires_grad=True) if with_bias else None
    params = (w, b) if with_bias else (w,)
    cases = [(0.02, 1, 1, True), (0.1, 1, 1, True), (0.02, 3, 1, True), (0.1, 4, 1, True), (0.5, 1, 1, False),
             (0.1, 1, 2, False)]  # rate, top (> 1: spike counts, kept as bytes), stride, event-driven
    for rate, top, stride, sparse in cases:
        calls.clear()
        shape = (B, Cin, H, W)
        x = (torch.rand(shape, generator=gen) < rate) * torch.randint(1, top + 1, shape, generator=gen)
        x = x.to(dtype).requires_grad_()
        y = spike_ops.spike_conv2d(x, w, b, stride, 1)
        want_y = F.conv2d(x, w, b, stride, 1)
        torch.testing.assert_close(y, want_y, atol=atol, rtol=0)
        g = torch.randn(y.shape, generator=gen, dtype=dtype)
        got = torch.autograd.grad(y, (x, *params), g)
        want = torch.autograd.grad(want_y, (x, *params), g)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, atol=atol * 10, rtol=0)
        assert calls == (["sparse_conv3x3", "sparse_conv3x3_wgrad"] if sparse else [])
        calls.clear()  # only the input gradient: no weight gradient kernel
        y = spike_ops.spike_conv2d(x, w.detach(), None if b is None else b.detach(), stride, 1)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], want[0], atol=atol * 10, rtol=0)
        assert calls == (["sparse_conv3x3"] if sparse else [])
        for mode in (torch.no_grad, torch.inference_mode):  # inference takes the same path
            calls.clear()
            with mode():
                torch.testing.assert_close(spike_ops.spike_conv2d(x, w, b, stride, 1), want_y, atol=atol, rtol=0)
            assert calls == (["sparse_conv3x3"] if sparse else [])
    with kernel_config(event_driven=False):
        calls.clear()
        x = (torch.rand(B, Cin, H, W, generator=gen) < 0.02).to(dtype).requires_grad_()
        assert torch.equal(spike_ops.spike_conv2d(x, w, b, 1, 1), F.conv2d(x, w, b, 1, 1)) and not calls


@pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# the last two are past pool.h's row masks (rows up to 64 wide, planes up to 256 tall)
@pytest.mark.parametrize("H,W", [(1, 1), (2, 3), (7, 8), (16, 16), (9, 5), (5, 70), (260, 3)])
def test_spike_max_pool_routes_gradients_like_torch(monkeypatch, dtype, H, W):
    calls = []
    for name in ("maxpool3s2", "maxpool3s2_backward"):
        real = getattr(cpp, name)
        monkeypatch.setattr(cpp, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    gen = torch.Generator().manual_seed(H * 31 + W)
    for rate in (0.0, 0.1, 0.5, 1.0):  # ties everywhere: all-zero and all-one windows included
        x = (torch.rand(2, 3, 4, H, W, generator=gen) < rate).to(dtype).requires_grad_()
        calls.clear()
        y = layers.max_pool(x)
        ref = F.max_pool2d(x.flatten(0, 1), 3, 2, 1).unflatten(0, (2, 3))
        assert torch.equal(y, ref)
        g = torch.randn(y.shape, generator=gen, dtype=dtype)
        (got,) = torch.autograd.grad(y, x, g)
        (want,) = torch.autograd.grad(ref, x, g)
        assert torch.equal(got, want)  # same element picked, same order of adding
        assert calls == ["maxpool3s2", "maxpool3s2_backward"]
    counts = torch.randint(0, 3, (2, 3, 4, H, W), generator=gen).to(dtype).requires_grad_()
    calls.clear()
    layers.max_pool(counts).sum().backward()  # not binary: torch's own pool
    assert calls == [] or calls == ["maxpool3s2", "maxpool3s2_backward"] and counts.max() <= 1


def test_compact_ops_under_bf16_autocast_match_plain():
    """Under autocast the gradient arrives in bf16 beside float32 weights; compact ops must give plain's grads."""
    x = _spikes((3, 5, 7, 12))
    w, b = torch.randn(6, 12, requires_grad=True), torch.randn(6, requires_grad=True)
    xc = _spikes((4, 3, 9, 9), seed=1)
    wc = torch.randn(5, 3, 3, 3, requires_grad=True)
    a, m = _spikes((2, 3, 7, 5), seed=2), _spikes((2, 3, 5, 4), seed=3)
    cases = [
        (lambda: spike_ops.spike_linear(x, w, b), lambda: F.linear(x, w, b), (x, w, b)),
        (lambda: spike_ops.spike_conv2d(xc, wc, None, 1, 1), lambda: F.conv2d(xc, wc, None, 1, 1), (xc, wc)),
        (lambda: spike_ops.spike_matmul(a, m), lambda: a @ m, (a, m)),
    ]
    for compact, plain, inputs in cases:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y1, y2 = compact(), plain()
        assert y1.dtype == y2.dtype == torch.bfloat16 and torch.equal(y1, y2)
        g = torch.randn_like(y1)
        for t, g1, g2 in zip(inputs, torch.autograd.grad(y1, inputs, g), torch.autograd.grad(y2, inputs, g)):
            assert g1.dtype == g2.dtype == t.dtype
            torch.testing.assert_close(g1, g2)


def test_compact_model_same_numbers_less_memory():
    model = spikformer()
    x = torch.randn(2, 3, 16, 16)
    with kernel_config(event_driven=False):  # bit-for-bit equality holds without the event-driven linears
        out1, g1 = grads(model, x)
        big = saved_bytes(lambda: model(x))
        with kernel_config(compact_spikes=False):
            out2, g2 = grads(model, x)
            plain = saved_bytes(lambda: model(x))
    assert torch.equal(out1, out2)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], **TOL)
    assert big < 0.8 * plain


@pytest.mark.parametrize("build", [spikformer, hst], ids=["spikformer", "hst"])
def test_recompute_bn_neurons_same_numbers_less_memory(build, separate_units):
    x = torch.randn(2, 3, 16, 16)
    plain, lean = build(), build()
    assert recompute_bn_neurons(lean) > 0
    out1, g1 = grads(plain, x)
    out2, g2 = grads(lean, x)
    assert torch.equal(out1, out2)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], **TOL)
    for (k, a), b in zip(plain.state_dict().items(), lean.state_dict().values()):
        assert torch.equal(a, b), k  # running statistics updated once, not twice
    assert saved_bytes(lambda: lean(x)) < 0.9 * saved_bytes(lambda: plain(x))
    recompute_bn_neurons(lean, False)
    assert saved_bytes(lambda: lean(x)) == saved_bytes(lambda: plain(x))


@pytest.mark.parametrize("build", [spikformer, hst], ids=["spikformer", "hst"])
def test_checkpointing_same_gradients_and_stats(build):
    x = torch.randn(2, 3, 16, 16)
    plain, ckpt = build(), build()
    ckpt.set_grad_checkpointing(True)
    keys = list(plain.state_dict())
    assert list(ckpt.state_dict()) == keys
    out1, g1 = grads(plain, x)
    out2, g2 = grads(ckpt, x)
    assert torch.equal(out1, out2)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], **TOL)
    check_checkpointing_saves_less(plain, ckpt, x)
    assert len(backbone_blocks(ckpt)) == (2 if build is spikformer else 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_forward_equals_full(backend):
    model = set_backend(spikformer(T=6), backend).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full = model(x)
    for chunk in (1, 4, 6, 9):
        assert torch.equal(chunked_forward(model, x, chunk), full)
    assert current_store() is None
    with torch.no_grad():
        assert torch.equal(model(x), full)  # stateless again after the context


@pytest.mark.parametrize("kind", ["sdt", "hst", "event_input"])
def test_chunked_forward_other_models(kind):
    if kind == "hst":
        model = hst().eval()
    elif kind == "sdt":
        model = spikformer(T=5, attn="sdsa", block="membrane").eval()
    else:
        model = spikformer(T=4).eval()
    x = torch.randn(5, 2, 3, 16, 16) if kind == "event_input" else torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        full = model(x)
    assert torch.equal(chunked_forward(model, x, 2), full)


def test_chunked_forward_refuses_what_it_cannot_do():
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="eval"):
        chunked_forward(spikformer(), x, 2)
    model = spikformer(attn=PSA, attn_kwargs={"ratio": 0.5, "mode": "random"}).eval()
    with pytest.raises(NotImplementedError, match="PSA"):
        chunked_forward(model, x, 2)
    with pytest.raises(ValueError, match="chunk"):
        chunked_forward(spikformer().eval(), x, 0)
    with pytest.raises(NotImplementedError, match="Spikformer"):
        chunked_forward(torch.nn.Linear(2, 2).eval(), x, 2)
    spili = create_model("spiliformer_2_64_cifar", img_size=8, in_chans=1, T=2, heads=4).eval()
    with pytest.raises(NotImplementedError, match="SpiLiFormer"):
        chunked_forward(spili, torch.randn(1, 1, 8, 8), 1)
    with carry_membrane(), pytest.raises(RuntimeError, match="nested"), carry_membrane():
        pass
    assert current_store() is None


KEEP_FREED_PROBE = """
import ctypes, sys
import torch
from spikformers.train.runtime import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = keep_freed_memory() if sys.argv[1] == "on" else False
block = torch.empty(64 << 20, dtype=torch.uint8)
print(applied, libc.mallinfo2().hblkhd >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_keep_freed_memory_serves_large_tensors_from_the_heap() -> None:
    """A 64 MB tensor is mapped on its own by default, and comes from the heap once the thresholds are raised
    (mallinfo2's bytes in mmapped blocks; each case in a fresh process, as the setting is process-wide)."""
    def mapped_mb(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", KEEP_FREED_PROBE, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], int(out[1])

    default, on = mapped_mb("off"), mapped_mb("on")
    assert default[0] == "False" and default[1] >= 64
    assert on[0] == "True" and on[1] < 64
