"""SDSA (Spike-driven Transformer): no matrix product, a float64 reference, both block forms, SDT presets, training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers import digits, record, train_digits
from spikformers import count_parameters, create_model, list_models
from spikformers.attention import SDSA, create_attention
from spikformers.kernels import kernel_config, lif_reference
from spikformers.layers import LinearBN
from spikformers.models.blocks import MembraneBlock

MATMULS = {"matmul", "bmm", "mm", "einsum", "__matmul__", "__rmatmul__", "baddbmm", "addmm", "tensordot", "mv"}


def tiny(attn: str = "sdsa", seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("spikformer_2_64_cifar", img_size=16, in_chans=1, attn=attn, **kw)


class CallLog(TorchFunctionMode):
    """Records the name of every torch function called while active (under ``kernel_config(observable=True)``,
    the switch through which the kernels let a watcher see every product)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("block", ["spikformer", "membrane"])
def test_no_matrix_product_inside_sdsa(block: str) -> None:
    model, store = tiny(block=block), {}
    record(model.blocks[0].attn, store, "x", inputs=True)
    with torch.no_grad():
        model(digits()[0][:32])
    attn, x = model.blocks[0].attn, store["x"][0]
    log = CallLog()
    with kernel_config(observable=True), log, torch.no_grad():
        attn(x)
    assert "linear" in log.names and "sum" in log.names  # the mode sees the projections and the token sum
    assert not MATMULS & set(log.names), sorted(MATMULS & set(log.names))
    log = CallLog()  # the backward of the training step has none either
    out = attn.train()(x.requires_grad_())
    with log:
        out.sum().backward()
    assert not MATMULS & set(log.names)
    log = CallLog()  # control: the same recorder does see SSA's matrix products
    with kernel_config(observable=True), log, torch.no_grad():
        tiny("ssa", block=block).blocks[0].attn(x)
    assert MATMULS & set(log.names)


def test_float64_reference_and_heads_do_not_matter() -> None:
    model, store = tiny(), {}
    attn = model.blocks[1].attn
    for name in ("q", "k", "v"):
        record(getattr(attn, name), store, name)
    record(attn.attn_neuron, store, "kv")
    record(attn.proj, store, "p", inputs=True)
    record(attn, store, "x", inputs=True)
    with torch.no_grad():
        model(digits()[0][:48])
    q, k, v = (store[n][0].double() for n in "qkv")
    assert all(set(t.unique().tolist()) == {0.0, 1.0} for t in (q, k, v))
    kv = lif_reference((k * v).sum(dim=2, keepdim=True), v_th=0.5)  # [T, B, 1, D] channel mask
    assert torch.equal(store["kv"][0].double(), kv)
    assert torch.equal(store["p"][0].double(), q * kv)
    one_head = SDSA(64, heads=1, qkv_bias=True)
    one_head.load_state_dict(attn.state_dict())
    assert attn.heads == 2
    with torch.no_grad():
        x = store["x"][0]
        assert torch.equal(one_head.eval()(x), copy.deepcopy(attn).eval()(x))


def test_sdt_presets() -> None:
    names = list_models("sdt_*")
    assert {"sdt_8_768", "sdt_8_512", "sdt_2_512_cifar", "sdt_4_384_cifar", "sdt_2_256_dvs"} <= set(names)
    with torch.device("meta"):
        sdt = create_model("sdt_8_768")
        assert isinstance(sdt.blocks[0], MembraneBlock) and isinstance(sdt.blocks[0].attn, SDSA)
        # docs/models.md "Parameter counts", official used counts (SDT's Q/K/V convs have no bias)
        assert count_parameters(sdt) == 66_338_632 == count_parameters(create_model("spikformer_8_768"))
        assert count_parameters(create_model("sdt_8_512")) == 29_689_384
        assert count_parameters(create_model("sdt_2_512_cifar")) == 10_233_418
        assert count_parameters(create_model("sdt_2_512_cifar", num_classes=100)) == 10_279_588
        ref = count_parameters(create_model("spikformer_4_384_cifar"))
        assert count_parameters(create_model("spikformer_4_384_cifar", attn="sdsa")) == ref
        assert count_parameters(create_model("sdt_4_384_cifar", qkv_bias=True)) == ref


@pytest.mark.parametrize("name", ["spikformer_1_32_cifar", "sdt_1_32_cifar"])
def test_sdsa_trains_on_digits(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, img_size=16, in_chans=1, T=2, attn="sdsa")
    acc = train_digits(model)
    print(f"{name}: held-out digits accuracy after 4 epochs: {acc:.3f}")
    assert acc >= 0.5


@pytest.mark.parametrize("attn", ["ssa", "psa", "a2os2a", "sdsa", "ff_lidiff"])
def test_membrane_block_builds_its_attention_without_the_output_neuron(attn: str) -> None:
    """The membrane-shortcut block asks the attention for an output unit that ends at its norm (no neuron to swap
    out afterwards); the weights keep the names of the spiking form, so checkpoints load across both."""
    torch.manual_seed(0)
    blk = MembraneBlock(32, 4, attn=attn)
    assert type(blk.attn.proj) is LinearBN and not any(isinstance(m, torch.nn.Identity) for m in blk.modules())
    spiking = create_attention(attn, 32, 4)
    assert set(blk.attn.state_dict()) == set(spiking.state_dict())
    spiking.load_state_dict(blk.attn.state_dict())
    x = (torch.rand(2, 3, 5, 32) < 0.3).float()
    with torch.no_grad():
        membrane = blk.attn.eval()(x)
        assert not torch.equal(membrane, membrane.round())  # real-valued: the norm's output
        assert torch.equal(spiking.eval()(x), spiking.proj.neuron(membrane))  # the spiking form fires on it


def test_membrane_block_refuses_an_attention_that_cannot_drop_its_neuron() -> None:
    with pytest.raises(ValueError, match="FBLiDiff has no such option"):
        MembraneBlock(32, 4, attn="fb_lidiff")
    with pytest.raises(ValueError, match="drop proj_neuron=True"):
        MembraneBlock(32, 4, attn="ssa", proj_neuron=True)
