"""PSA (EST): r=0 is SSA exactly, structured r=0.5 halves the attention operations, random masks are seeded."""

from __future__ import annotations

import pytest
import torch

from helpers import digits, record, train_digits
from spikformers import count_parameters, create_model
from spikformers.attention import PSA
from spikformers.attention.base import split_heads
from spikformers.attention.psa import structured_channels


def tiny(attn: str = "ssa", seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("spikformer_2_64_cifar", img_size=16, in_chans=1, attn=attn, **kw)


def attention_input(n: int = 32) -> torch.Tensor:
    """Real spikes ``[T, B, N, D]`` entering the first attention of a Spikformer that sees real digits."""
    model, store = tiny(), {}
    record(model.blocks[0].attn, store, "x", inputs=True)
    with torch.no_grad():
        model(digits()[0][:n])
    return store["x"][0]


def nonzero_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """Synaptic operations of ``Q (K^T V)``: products whose two operands are both nonzero, ``[..., N, d]`` inputs."""
    nz = [t.ne(0).double() for t in (q, k, v)]
    kv_ops = (nz[1].transpose(-2, -1) @ nz[2]).sum()
    m = k.double().transpose(-2, -1) @ v.double()
    return float(kv_ops + (nz[0] @ m.ne(0).double()).sum())


@pytest.mark.parametrize("mode", ["random", "structured"])
def test_ratio_zero_is_ssa_exactly(mode: str) -> None:
    x = digits()[0][:32]
    ssa, psa = tiny("ssa"), tiny("psa", seed=1, attn_kwargs={"ratio": 0.0, "mode": mode})
    psa.load_state_dict(ssa.state_dict())
    assert count_parameters(psa) == count_parameters(ssa)
    for train in (True, False):
        ssa.train(train), psa.train(train)
        with torch.no_grad():
            assert torch.equal(ssa(x), psa(x))


def test_structured_half_the_attention_operations() -> None:
    x, _ = digits()
    model, store = tiny("psa", attn_kwargs={"ratio": 0.5, "mode": "structured"}), {}
    for i, blk in enumerate(model.blocks):
        for p in ("q", "k", "v"):
            record(getattr(blk.attn, p), store, f"{i}{p}")
        record(blk.attn.attn_neuron, store, f"{i}a", inputs=True)
    with torch.no_grad():
        model(x[:64])
    ssa_ops = psa_ops = 0.0
    for i, blk in enumerate(model.blocks):
        heads, keep = blk.attn.heads, blk.attn.keep
        q, k, v = (split_heads(store[f"{i}{p}"][0], heads) for p in "qkv")
        d = q.shape[-1]
        assert keep.shape == (heads, d // 2)
        assert all(len(set(keep[h].tolist())) == d // 2 for h in range(heads))
        idx = keep[:, None, :].expand(*q.shape[:-1], d // 2)
        q_s, k_s = q.gather(-1, idx), k.gather(-1, idx)
        # the module computes exactly Q_S (K_S^T V) * 0.125 (the paper's CIFAR scale), in float64 here
        ref = (q_s.double() @ (k_s.double().transpose(-2, -1) @ v.double())) * 0.125
        got = split_heads(store[f"{i}a"][0], heads)
        assert torch.equal(got.double(), ref)
        ssa_ops += nonzero_products(q, k, v)
        psa_ops += nonzero_products(q_s, k_s, v)
        # dense multiply-accumulates: 2 N |S| d against 2 N d d, exactly half
        assert (2 * q_s.shape[-2] * q_s.shape[-1] * d) * 2 == 2 * q.shape[-2] * d * d
    assert ssa_ops > 1e4
    print(f"attention synaptic operations: SSA {ssa_ops:.0f}, PSA structured r=0.5 {psa_ops:.0f}")
    assert 0.35 < psa_ops / ssa_ops < 0.65, psa_ops / ssa_ops


def test_structured_channels_spread_and_shift() -> None:
    keep = structured_channels(8, 2, 0.5)
    assert keep.tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert structured_channels(6, 3, 0.0).tolist() == [list(range(6))] * 3
    assert structured_channels(10, 1, 0.7).shape == (1, 3)


def test_random_masks_seeded_at_inference_and_fresh_in_training() -> None:
    psa = PSA(64, 2, qkv_bias=True, ratio=0.5, mode="random", seed=3)
    with torch.no_grad():
        q, k, v = psa.qkv(attention_input())
        ssa_product = q @ k.transpose(-2, -1) @ v
        psa.train()
        a, b = psa.product(q, k, v), psa.product(q, k, v)
        assert not torch.equal(a, b)
        assert a.sum() < 0.25 * ssa_product.sum()  # three masks at r = 0.5 keep about 1/8
        psa.eval()
        a, b = psa.product(q, k, v), psa.product(q, k, v)
        assert torch.equal(a, b)
        psa.seed = 4
        assert not torch.equal(psa.product(q, k, v), a)
    model, x = tiny("psa", attn_kwargs={"ratio": 0.5, "seed": 7}).eval(), digits()[0][:16]
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_random_mask_drops_q_k_and_map_at_ratio() -> None:
    psa = PSA(64, 1, ratio=0.5, mode="random").eval()
    ones = torch.ones(1, 1, 1, 64, 64)
    # E[(mask(mask(Q) mask(K)^T)) V] = N d (1 - r)^3 with all-one spikes: three independent masks, V untouched
    mean = psa.product(ones, ones, ones).mean().item()
    assert abs(mean / (64 * 64 * 0.125) - 1) < 0.05
    with pytest.raises(ValueError, match="mode"):
        PSA(64, 1, mode="block")
    with pytest.raises(ValueError, match="ratio"):
        PSA(64, 1, ratio=1.0)


def test_est_presets_match_spikformer_counts() -> None:
    with torch.device("meta"):
        for name in ("4_384_cifar", "8_384", "2_256_dvs"):
            est, ref = create_model(f"est_{name}"), create_model(f"spikformer_{name}")
            assert isinstance(est.blocks[0].attn, PSA)
            assert count_parameters(est) == count_parameters(ref)
        assert est.blocks[0].attn.scale == 0.25  # the DVS variant's soft default reaches PSA


def test_psa_trains_on_digits() -> None:
    torch.manual_seed(0)
    model = create_model("est_1_32_cifar", img_size=16, in_chans=1, T=2)
    acc = train_digits(model)
    print(f"held-out digits accuracy after 4 epochs: {acc:.3f}")
    assert acc >= 0.5
