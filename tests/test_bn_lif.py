"""Batch norm fused with the LIF (the units' one-node path) against the separate norm and neuron modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from spikformers import create_model
from spikformers.kernels import bn_lif, cpp, kernel_config
from spikformers.layers import ConvBNSpike, LinearBNSpike

pytestmark = pytest.mark.skipif(not cpp.available(), reason=f"C++ kernels unavailable: {cpp.error}")


def _unit(kind: str, dtype: torch.dtype, **lif) -> torch.nn.Module:
    torch.manual_seed(0)
    unit = LinearBNSpike(24, 40, **lif) if kind == "linear" else ConvBNSpike(5, 12, pool=kind == "conv_pool", **lif)
    bn = unit.bn if kind == "linear" else unit.conv.bn
    with torch.no_grad():  # a norm away from its initial identity, so that its gradients are not trivial
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 1.0)
    return unit.to(dtype)


def _input(kind: str, dtype: torch.dtype, T: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = (T, 3, 7, 24) if kind == "linear" else (T, 2, 5, 9, 11)
    return torch.randn(shape, generator=gen, dtype=dtype) * 2


def _run(unit: torch.nn.Module, x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, ...]:
    with kernel_config(fused_bn_neuron=fused):
        x = x.clone().requires_grad_()
        out = unit(x)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
        (out * g).sum().backward()
    bn = unit.bn if hasattr(unit, "bn") else unit.conv.bn
    norm = [None if t is None else t.grad for t in (bn.weight, bn.bias)]
    stats = [None if t is None else t.clone() for t in (bn.running_mean, bn.running_var)]
    proj = unit_projection(unit)
    proj_bias = [] if proj.bias is None else [proj.bias.grad]  # linear units fold it into the norm when fused
    return (out.detach(), x.grad, *norm, proj.weight.grad, *stats, *proj_bias)


def unit_projection(unit: torch.nn.Module) -> torch.nn.Module:
    return unit.linear if hasattr(unit, "linear") else unit.conv.conv


KINDS = ["linear", "conv", "conv_pool"]  # conv_pool: the conv unit that max-pools its spikes in the same node


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("detach_reset", [True, False])
def test_fused_unit_matches_separate_modules_in_float64(kind, detach_reset):
    fused_unit = _unit(kind, torch.float64)
    fused_unit.neuron.detach_reset = detach_reset
    plain = copy.deepcopy(fused_unit)
    x = _input(kind, torch.float64)
    calls = []
    real = bn_lif.BNLIFFunction.apply
    bn_lif.BNLIFFunction.apply = lambda *a: calls.append(1) or real(*a)
    try:
        got = _run(fused_unit, x, True)
    finally:
        bn_lif.BNLIFFunction.apply = real
    want = _run(plain, x, False)
    assert calls, "the unit did not take the fused path"
    assert torch.equal(got[0], want[0]) and 0.05 < got[0].mean() < 0.6
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_unit_in_float32_agrees_but_for_threshold_ties(kind):
    got = _run(_unit(kind, torch.float32), _input(kind, torch.float32), True)
    want = _run(_unit(kind, torch.float32), _input(kind, torch.float32), False)
    assert (got[0] != want[0]).float().mean() < 1e-3  # only membranes within rounding of the threshold may differ
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_unit_in_evaluation_and_without_grad(kind):
    unit = _unit(kind, torch.float64)
    x = _input(kind, torch.float64)
    _run(unit, x, True)  # running statistics away from their initial values
    unit.zero_grad(set_to_none=True)
    unit.eval()
    plain = copy.deepcopy(unit)
    with torch.no_grad():
        fused_out = unit(x)
        with kernel_config(fused_bn_neuron=False):
            plain_out = plain(x)
    assert torch.equal(fused_out, plain_out)
    got, want = _run(unit, x, True), _run(plain, x, False)  # evaluation mode with autograd: running statistics
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("options", [{"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_fused_unit_follows_batch_norm_options(options):
    unit = _unit("linear", torch.float64)
    unit.bn = torch.nn.BatchNorm1d(40, **options).double()
    plain = copy.deepcopy(unit)
    x = _input("linear", torch.float64)
    for _ in range(2):  # twice: the cumulative average (momentum None) needs a second batch to differ
        got, want = _run(unit, x * 1.5, True), _run(plain, x * 1.5, False)
        unit.zero_grad()
        plain.zero_grad()
    for a, b in zip(got, want):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_fused_unit_keeps_only_the_projection_output():
    unit = _unit("linear", torch.float32)
    x = _input("linear", torch.float32, T=4).requires_grad_()
    sizes = {}
    for fused in (True, False):
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with kernel_config(fused_bn_neuron=fused), saved_tensors_hooks(pack, lambda t: t):
            unit(x)
        sizes[fused] = sum(n for n in seen.values() if n >= x.shape[0] * 3 * 7 * 40 * 4)  # tensors of y's size
    y_bytes = 4 * 3 * 7 * 40 * 4
    assert sizes[True] == y_bytes  # y alone
    assert sizes[False] >= 2 * y_bytes  # the norm's input and the neuron's input (the norm's output)


def test_pooling_unit_keeps_only_the_conv_output_and_makes_no_full_size_spikes():
    unit = _unit("conv_pool", torch.float32)
    x = _input("conv_pool", torch.float32).requires_grad_()
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    made = []
    real_maxpool = cpp.maxpool3s2
    cpp.maxpool3s2 = lambda t: made.append(t.shape) or real_maxpool(t)
    try:
        with saved_tensors_hooks(pack, lambda t: t):
            out = unit(x)
    finally:
        cpp.maxpool3s2 = real_maxpool
    assert out.shape == (4, 2, 12, 5, 6) and not made  # pooled in the unit: the separate pool never ran
    y_bytes = 4 * 2 * 12 * 9 * 11 * 4
    assert max(saved.values()) == y_bytes and sum(n for n in saved.values() if n >= y_bytes) == y_bytes
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hooks_and_other_neurons_take_the_separate_modules():
    unit = _unit("linear", torch.float32)
    x = _input("linear", torch.float32)
    kept = {}
    handle = unit.bn.register_forward_hook(lambda m, a, y: kept.setdefault("y", y))
    try:
        unit(x)
    finally:
        handle.remove()
    assert "y" in kept and not torch.all((kept["y"] == 0) | (kept["y"] == 1))  # the norm really ran
    for change in ({"backend": "reference"}, {"saved": "q16"}):
        other = _unit("linear", torch.float32)
        for k, v in change.items():
            setattr(other.neuron, k, v)
        assert other.neuron.unit_params() is None
    ternary = LinearBNSpike(24, 40, neuron="ternary")
    assert not hasattr(ternary.neuron, "unit_params")
    assert ternary(x).abs().max() <= 1


def test_training_with_one_value_per_channel_raises():
    unit = _unit("linear", torch.float32)
    with pytest.raises(ValueError, match="more than 1 value"):
        unit(torch.randn(1, 1, 1, 24))


def test_model_logits_and_gradients_match_with_and_without_fusion():
    torch.manual_seed(0)
    model = create_model("spikformer_2_64_cifar").double()
    plain = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outs = []
    for m, fused in ((model, True), (plain, False)):
        with kernel_config(fused_bn_neuron=fused):
            logits = m(x)
            logits.square().sum().backward()
        outs.append((logits.detach(), [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-10, rtol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_backward_twice_raises_inside_units_and_works_on_a_kept_input():
    unit = _unit("linear", torch.float64)
    x = _input("linear", torch.float64).requires_grad_()
    out = unit(x)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.sum().backward()

    from spikformers.kernels.common import NeuronParams

    bn = torch.nn.BatchNorm1d(40).double()
    y = torch.randn(4, 21, 40, 1, dtype=torch.float64, requires_grad=True)
    y_keep = y.detach().clone()
    spikes = bn_lif.bn_lif(y, bn, NeuronParams(), (4, 21, 40, 1))  # y is the caller's: left as it was
    spikes.sum().backward(retain_graph=True)
    first = y.grad.clone()
    spikes.sum().backward()
    assert torch.equal(y.detach(), y_keep)
    torch.testing.assert_close(y.grad, 2 * first)


def test_backward_passes_one_scratch_buffer_between_units():
    from spikformers.kernels.common import NeuronParams

    torch.manual_seed(0)
    widths = (40, 24, 56)  # a smaller unit takes the buffer, a larger one needs a new one
    bns = [torch.nn.BatchNorm1d(c).double() for c in widths]
    mix = [torch.randn(a, b, dtype=torch.float64) for a, b in zip((40, *widths), widths)]
    x = torch.randn(4, 21, 40, 1, dtype=torch.float64, requires_grad=True)
    grads = []
    for private in (True, False):  # private: gradients over the units' inputs, gz in the shared buffer
        x.grad = None
        h = x
        for bn, w in zip(bns, mix):
            y = torch.einsum("tacp,cd->tadp", h, w).contiguous()
            h = bn_lif.bn_lif(y, bn, NeuronParams(), tuple(y.shape), overwrite=private)
        (h * torch.linspace(0, 1, h.numel(), dtype=h.dtype).view(h.shape)).sum().backward()
        grads.append(x.grad.clone())
        assert len(bn_lif._SCRATCH) == (1 if private else 0)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    h = bn_lif.bn_lif(torch.randn(4, 21, 40, 1, dtype=torch.float64, requires_grad=True), bns[0], NeuronParams(),
                      (4, 21, 40, 1))
    assert not bn_lif._SCRATCH  # a training forward lets the buffer go


def test_linear_unit_under_cpu_autocast_adds_its_bias_back():
    unit = _unit("linear", torch.float32)
    x = _input("linear", torch.float32)
    outs = []
    for fused in (True, False):
        with kernel_config(fused_bn_neuron=fused), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(unit(x))  # bf16 projections: the kernels do not take them
    assert outs[0].dtype == outs[1].dtype
    assert (outs[0] != outs[1]).float().mean() < 0.02  # only bf16 rounding of the bias add differs
    unit.linear.bias.data += 100.0  # the bias really is added back: the norm's running mean follows it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unit(x)
    assert unit.bn.running_mean.mean() > 5.0
