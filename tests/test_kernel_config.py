"""The kernel switchboard: one typed configuration, set for a block and put back, read by every kernel path."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from spikformers.kernels import KernelConfig, get_kernel_config, kernel_config, set_kernel_config, spike_ops

SUITE = KernelConfig(calibrate=False)  # the defaults, with the fixed thresholds the suite runs under (conftest.py)


def test_kernel_config_sets_a_block_and_puts_back_the_previous_switches() -> None:
    before = get_kernel_config()
    assert before == SUITE  # nothing else in the suite leaves a switch changed
    with kernel_config(event_driven=False, overwrite_scratch=False) as inside:
        assert get_kernel_config() is inside
        assert (inside.event_driven, inside.overwrite_scratch) == (False, False)
        assert (inside.compact_spikes, inside.fused_bn_neuron, inside.kernel_check) == (True, True, None)
        with kernel_config(event_driven=True, kernel_check=False):  # nested: the outer block's switches return
            assert get_kernel_config() == KernelConfig(overwrite_scratch=False, kernel_check=False, calibrate=False)
        assert get_kernel_config() == inside
    assert get_kernel_config() == before
    with pytest.raises(RuntimeError, match="inside"), kernel_config(compact_spikes=False):
        raise RuntimeError("an error inside the block")
    assert get_kernel_config() == before  # put back on an error too


def test_set_kernel_config_returns_what_it_replaced() -> None:
    before = get_kernel_config()
    try:
        previous = set_kernel_config(fused_bn_neuron=False)
        assert previous == before and not get_kernel_config().fused_bn_neuron
        assert set_kernel_config(previous) == KernelConfig(fused_bn_neuron=False, calibrate=False)
        assert get_kernel_config() == before
    finally:
        set_kernel_config(before)


@pytest.mark.parametrize("changes, message", [
    ({"sparse": False}, "unknown kernel switch 'sparse'; expected one of .*event_driven"),
    ({"event_driven": 0}, "kernel switch 'event_driven' must be True or False, got 0"),
    ({"compact_spikes": None}, "must be True or False, got None"),
    ({"kernel_check": "off"}, "'kernel_check' must be True, False or None, got 'off'"),
])
def test_a_wrong_switch_or_value_is_refused_and_changes_nothing(changes, message) -> None:
    before = get_kernel_config()
    with pytest.raises(TypeError, match=message):
        set_kernel_config(**changes)
    with pytest.raises(TypeError, match=message), kernel_config(**changes):
        pass
    assert get_kernel_config() == before
    with pytest.raises(TypeError, match="takes a KernelConfig"):
        set_kernel_config({"event_driven": False})  # type: ignore[arg-type]


def test_the_switches_reach_the_products(monkeypatch) -> None:
    """The products read the switchboard at each call: event-driven off gives F.linear bit for bit, compact saving
    off keeps the float input for backward."""
    calls = []
    real = spike_ops._cpu_kernels.sparse_linear
    monkeypatch.setattr(spike_ops._cpu_kernels, "sparse_linear", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 16, 64, generator=gen) < 0.05).float()
    w = torch.randn(32, 64, generator=gen)
    if spike_ops._fast(x.dtype, x.device):
        spike_ops.spike_linear(x, w)
        assert calls == [1]
    with kernel_config(event_driven=False):
        calls.clear()
        assert torch.equal(spike_ops.spike_linear(x, w), F.linear(x, w)) and not calls
    wg = w.clone().requires_grad_()
    for compact, kept in ((True, x.numel() // 8), (False, x.numel() * 4)):  # bits, or the float32 input
        saved = {}

        def pack(t, saved=saved):
            if t.untyped_storage().data_ptr() != wg.untyped_storage().data_ptr():
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with kernel_config(compact_spikes=compact), saved_tensors_hooks(pack, lambda t: t):
            spike_ops.spike_linear(x, wg)
        assert list(saved.values()) == [kept], compact


class _Calls(TorchFunctionMode):
    """Records each ``linear`` / ``conv2d`` call's input shape (a watcher from outside, as the energy counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in ("linear", "conv2d"):
            self.seen.append((func.__name__, tuple(args[0].shape)))
        return func(*args, **(kwargs or {}))


def test_observable_shows_a_watcher_every_product_and_every_module(monkeypatch) -> None:
    """Under ``observable=True`` no compiled product or fused unit runs: the watcher sees every linear and conv
    (the stem's first conv on all T steps) and every neuron module is called; the logits do not change. Without
    it, the same watcher misses the fused units' neurons and sees the stem's image convolved once."""
    from helpers import digits
    from spikformers import create_model
    from spikformers.neurons import LIF, Neuron

    kernels = spike_ops._cpu_kernels
    compiled: list[str] = []
    for name in ("sparse_linear", "sparse_conv3x3", "spike_attention", "bn_lif_forward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name: compiled.append(name) or real(*a))
    torch.manual_seed(0)
    model = create_model("spikformer_2_64_cifar", img_size=16, in_chans=1, T=2).eval()
    neurons = [m for m in model.modules() if isinstance(m, Neuron)]
    assert {type(m) for m in neurons} == {LIF}
    called: list[Neuron] = []  # counted without a hook (a hook would make the units run plain by itself)
    monkeypatch.setattr(LIF, "forward", lambda self, x, f=LIF.forward: called.append(self) or f(self, x))
    x = digits()[0][:8]
    with torch.no_grad():
        fast = model(x)
        compiled.clear(), called.clear()
        with kernel_config(observable=True), _Calls() as watcher:
            watched = model(x)
    assert not compiled and set(called) == set(neurons)
    linears = [s for op, s in watcher.seen if op == "linear"]
    assert len(linears) == 2 * 6 + 1  # q, k, v, proj, fc1, fc2 per block, the head
    assert [s for op, s in watcher.seen if op == "conv2d"][0] == (2 * 8, 1, 16, 16)  # T * B images
    assert torch.allclose(watched, fast, atol=1e-5)
    if kernels.available():  # the control: the same watcher without the switch
        compiled.clear(), called.clear()
        with torch.no_grad(), _Calls() as watcher:
            model(x)
        assert "bn_lif_forward" in compiled and len(set(called)) < len(neurons)
        assert [s for op, s in watcher.seen if op == "conv2d"][0] == (8, 1, 16, 16)
