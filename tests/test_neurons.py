"""LIF against a plain per-step loop written here (spikes exact, gradients to 1e-6), and statelessness."""

from __future__ import annotations

import pytest
import torch

from spikformers.neurons import LIF, ReLUNeuron, TernaryNeuron, create_neuron


def loop_lif(x, tau, v_th, v_reset, alpha, detach_reset):
    """The LIF of docs/models.md written out once more, independently of the library: one step at a time,
    autograd throughout."""

    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            ctx.save_for_backward(u)
            return (u >= 0).to(u.dtype)

        @staticmethod
        def backward(ctx, g):
            (u,) = ctx.saved_tensors
            s = torch.sigmoid(alpha * u)
            return g * alpha * s * (1 - s)

    v = torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        s = Spike.apply(h - v_th)
        r = s.detach() if detach_reset else s
        v = h * (1 - r) + v_reset * r
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_lif_matches_loop(seed: int, backend: str) -> None:
    g = torch.Generator().manual_seed(seed)
    T = int(torch.randint(1, 9, (1,), generator=g))
    shape = [T, *torch.randint(1, 6, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()]
    tau = float(torch.empty(1).uniform_(1.0, 4.0, generator=g))
    v_th = float(torch.empty(1).uniform_(0.2, 1.5, generator=g))
    v_reset = [0.0, -0.3][seed % 2]
    detach = seed % 3 != 0
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    neuron = LIF(tau=tau, v_th=v_th, v_reset=v_reset, detach_reset=detach, backend=backend)
    s = neuron(x)
    s_ref = loop_lif(x, tau, v_th, v_reset, 4.0, detach)
    assert torch.equal(s, s_ref)
    (gx,) = torch.autograd.grad(s, x, grad)
    (gx_ref,) = torch.autograd.grad(s_ref, x, grad)
    torch.testing.assert_close(gx, gx_ref, atol=1e-6, rtol=0)


def test_lif_fires_on_equal_and_resets_hard() -> None:
    # tau=1: h = x exactly, so x == v_th must fire, and the hard reset drops the membrane to v_reset
    x = torch.tensor([[1.0], [0.5], [0.6], [1.0]])
    s = LIF(tau=1.0, v_th=1.0)(x)
    assert s.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    # tau=2 leaks: 0.8 -> h 0.4, then 0.4 + (0.8 - 0.4)/2 = 0.6, then 0.8 - ... stays below 1.0
    s = LIF()(torch.full((6, 1), 0.8))
    assert s.sum() == 0
    s = LIF()(torch.full((4, 1), 2.0))  # h = 1.0 at t=0 fires, reset, fires again
    assert s.flatten().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_no_state_leaks_between_calls() -> None:
    neuron = LIF()
    x = torch.rand(4, 3, 7) * 1.5
    first = neuron(x)
    neuron(torch.full_like(x, 10.0))  # a call that would leave a charged membrane in a stateful neuron
    assert torch.equal(neuron(x), first)
    assert not any(isinstance(v, torch.Tensor) for v in vars(neuron).values())


def test_ternary_and_relu_values() -> None:
    x = torch.randn(5, 4, 9) * 2
    s = TernaryNeuron()(x)
    assert set(s.unique().tolist()) <= {-1.0, 0.0, 1.0} and (s == -1).any() and (s == 1).any()
    assert set(TernaryNeuron(form="lif")(x).unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(ReLUNeuron()(x), x.clamp_min(0))
    assert isinstance(create_neuron("lif", v_th=0.5), LIF)
    with pytest.raises(ValueError, match="unknown neuron kind"):
        create_neuron("izhikevich")
