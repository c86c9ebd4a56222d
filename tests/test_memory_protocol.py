"""The memory savers work on any backbone through their protocol (``spikformers.memory``), not by its class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import check_checkpointing_saves_less
from spikformers.layers import LinearBNSpike
from spikformers.memory import checkpoint_blocks, chunked_forward, recompute_bn_neurons


class Residual(nn.Module):
    """``x + unit(x)`` on tokens ``[T, B, N, D]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.unit = LinearBNSpike(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.unit(x)


class TimeMix(nn.Module):
    """Mixes the time steps (each step sees the mean over all T): cannot run in chunks, and says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean(0, keepdim=True)

    def time_chunk_refusal(self) -> str | None:
        return "it averages over all T"


class Toy(nn.Module):
    """A backbone the library knows nothing of: pixels as tokens, a few residual units kept in ``layers``."""

    def __init__(self, T: int = 4, dim: int = 16, depth: int = 3, mix: bool = False) -> None:
        super().__init__()
        self.T = T
        self.embed = LinearBNSpike(3, dim)
        self.layers = nn.ModuleList(Residual(dim) for _ in range(depth))
        if mix:
            self.layers.insert(1, TimeMix())
        self.head = nn.Linear(dim, 5)

    def blocks_for_checkpointing(self) -> list[nn.Module]:
        return list(self.layers)

    def time_chunk_refusal(self) -> str | None:
        return None

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.T, *x.shape) if x.dim() == 4 else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.check_input(x).flatten(3).transpose(2, 3))  # [T, B, H*W, D]
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(2).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def toy(**kw) -> Toy:
    torch.manual_seed(0)
    return Toy(**kw)


def test_checkpointing_takes_the_blocks_a_backbone_names() -> None:
    x = torch.rand(2, 3, 6, 6)
    plain, ckpt = toy(), toy()
    checkpoint_blocks(ckpt)
    assert all(type(b.__dict__.get("forward")).__name__ == "_CheckpointedForward" for b in ckpt.layers)
    assert "forward" not in ckpt.embed.__dict__  # not named a block: left alone
    outs, grads = [], []
    for m in (plain, ckpt):
        y = m(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert torch.equal(outs[0], outs[1])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-6)
    check_checkpointing_saves_less(plain, ckpt, x)
    with pytest.raises(TypeError, match="Linear does not define blocks_for_checkpointing"):
        checkpoint_blocks(nn.Linear(2, 2))


def test_chunked_inference_runs_any_backbone_of_the_protocol() -> None:
    model = toy(T=5).eval()
    x = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        full = model(x)
    for chunk in (1, 2, 5):
        assert torch.equal(chunked_forward(model, x, chunk), full)


def test_a_module_inside_can_refuse_chunks_and_a_model_outside_the_protocol_is_refused() -> None:
    model = toy(mix=True).eval()
    with pytest.raises(NotImplementedError, match=r"does not support Toy: it averages over all T \(module layers.1\)"):
        chunked_forward(model, torch.rand(1, 3, 6, 6), 2)
    with pytest.raises(NotImplementedError, match="Linear does not declare that it runs in time chunks"):
        chunked_forward(nn.Linear(2, 2).eval(), torch.rand(1, 3, 6, 6), 2)


def test_recompute_bn_neurons_finds_units_by_their_flag() -> None:
    model = toy()
    model.layers.append(nn.Module())
    model.layers[-1].recompute_bn_neuron = False  # any module with the flag is a unit
    assert recompute_bn_neurons(model) == 5 and all(m.recompute_bn_neuron for m in model.modules()
                                                    if hasattr(m, "recompute_bn_neuron"))
    assert recompute_bn_neurons(model, False) == 5
