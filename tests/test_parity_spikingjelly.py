"""Models converted from spikingjelly's model zoo compute exactly what spikingjelly computes.

spikingjelly 2.0's Spikformer, QKFormer and Spike-driven Transformer are independent implementations: for each
factory (small images, several T, class counts, neuron settings, frame inputs), random weights and random
batch-norm statistics, float64, the converted model's logits equal spikingjelly's to 1e-9 and the spikes of every
patch embedding and block are identical; in training mode one forward and backward gives the same gradients of
every mapped parameter and the same batch-norm statistics. A deliberately wrong mapping fails these checks; what
has no equivalent is refused by name. The cases and their random initialisation are benchmarks/sj_parity.py's,
which prints the table of docs/checkpoints.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from spikformers import count_parameters, create_model

HAS_SJ = importlib.util.find_spec("spikingjelly") is not None
needs_sj = pytest.mark.skipif(not HAS_SJ, reason="spikingjelly is not installed (pip install spikingjelly==2.0.0)")
TOL = 1e-9


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sj_parity.py"
    spec = importlib.util.spec_from_file_location("bench_sj_parity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
CASES = {c.name: c for c in BENCH.CASES}
_converted: dict[str, tuple] = {}


def converted(name: str):  # type: ignore[no-untyped-def]
    """(conversion, input) of a case, converted once per session (eval mode, float64)."""
    from spikformers.convert import convert_spikingjelly

    if name not in _converted:
        case = CASES[name]
        src = BENCH.randomize(case.build()).double().eval()
        conversion = convert_spikingjelly(src, img_size=case.img_size)
        _converted[name] = conversion, BENCH.case_input(case, conversion.model)
    return _converted[name]


def fresh(name: str):  # type: ignore[no-untyped-def]
    """A new (conversion, input) of a case, for tests that corrupt it."""
    _converted.pop(name, None)
    out = converted(name)
    _converted.pop(name)
    return out


@needs_sj
@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_and_spikes_equal(name: str) -> None:
    from spikformers.convert import check_parity

    conversion, x = converted(name)
    p = check_parity(conversion, x)
    assert p.logits <= TOL, (p.logits, p.worst)
    assert p.spikes_identical, p.points
    assert all(0.01 < r < 0.99 for r in p.rates.values()), p.rates  # the compared layers fire, neither never nor always
    assert not conversion.model.training


@needs_sj
@pytest.mark.parametrize("name", list(CASES))
def test_train_gradients_and_statistics_equal(name: str) -> None:
    from spikformers.convert import check_parity

    conversion, x = converted(name)
    p = check_parity(conversion, x, train=True)
    assert not (conversion.source.training or conversion.model.training)  # left in the mode they were in
    assert p.logits <= TOL and p.spikes_identical, (p.logits, p.points)
    assert p.grads <= TOL, (p.grads, p.worst)
    assert p.buffers <= TOL, (p.buffers, p.worst)
    # every parameter of ours got a gradient through the map
    assert all(q.grad is not None for q in conversion.model.parameters())


@needs_sj
def test_key_map_is_complete_and_explicit() -> None:
    conversion, _ = converted("spikformer_small_frames")
    src_keys, dst_keys = set(conversion.source.state_dict()), set(conversion.model.state_dict())
    assert {k.source for k in conversion.keys} | set(conversion.ignored) == src_keys
    assert sorted(k.target for k in conversion.keys) == sorted(dst_keys)  # each target exactly once
    qkv = [k for k in conversion.keys if k.source == "blocks.0.attn.qkv_conv_bn.0.weight"]
    assert [(k.target, k.part, k.squeeze) for k in qkv] == [
        (f"blocks.0.attn.{n}.linear.weight", (i, 3), True) for i, n in enumerate("qkv")]


def _swap_qk(model: torch.nn.Module) -> None:
    a = model.blocks[0].attn
    with torch.no_grad():
        w = a.q.linear.weight.clone()
        a.q.linear.weight.copy_(a.k.linear.weight)
        a.k.linear.weight.copy_(w)


def _threshold(model: torch.nn.Module) -> None:
    model.embed.stages[1].neuron.v_th = 1.1


def _running_var(model: torch.nn.Module) -> None:
    model.blocks[0].mlp.fc1.bn.running_var.fill_(1.0)


def _scale(model: torch.nn.Module) -> None:
    model.blocks[0].attn.scale = 0.25


@needs_sj
@pytest.mark.parametrize("corrupt", [_swap_qk, _threshold, _running_var, _scale])
def test_a_wrong_mapping_is_caught(corrupt) -> None:  # type: ignore[no-untyped-def]
    from spikformers.convert import check_parity

    conversion, x = fresh("spikformer_small_frames")
    corrupt(conversion.model)
    p = check_parity(conversion, x)
    assert p.logits > 1e-6 and not p.spikes_identical


@needs_sj
def test_stem_pooling_option_matters() -> None:
    """spikingjelly pools the norm's output; our default (the official code) pools spikes: not the same model."""
    from spikformers.convert import check_parity

    conversion, x = fresh("spikformer_small_frames")
    cfg = conversion.model.default_cfg
    spikes = create_model(cfg["architecture"], **{**cfg["overrides"], "sps_pool": "spikes"}).double().eval()
    spikes.load_state_dict(conversion.model.state_dict())
    assert count_parameters(spikes) == count_parameters(conversion.model)
    conversion.model = spikes
    assert not check_parity(conversion, x).spikes_identical


@needs_sj
def test_detach_reset_is_caught_by_the_gradients() -> None:
    """spikingjelly's QKFormer leaves detach_reset off in its embeddings and MLPs; ours must follow, and only the
    training check can tell."""
    from spikformers.convert import check_parity

    conversion, x = fresh("qkformer_small")
    neurons = conversion.model.default_cfg["config"]["neurons"]
    assert neurons["patch_embed1.convs.0.neuron"] == {"detach_reset": False}
    assert "stage3.0.attn.q.neuron" not in neurons  # the attention's neurons detach, as ours by default
    for name in neurons:
        conversion.model.get_submodule(name).detach_reset = True
    assert check_parity(conversion, x).spikes_identical
    p = check_parity(conversion, x, train=True)
    assert p.spikes_identical and p.grads > 1e-6


@needs_sj
def test_converted_model_rebuilds_from_its_checkpoint(tmp_path: Path) -> None:
    from spikformers.convert import from_spikingjelly
    from spikformers.train.checkpoint import load_model, save_model_config, save_weights

    case = CASES["qkformer_small"]
    model = from_spikingjelly(BENCH.randomize(case.build()).eval(), img_size=case.img_size)
    save_model_config(model, tmp_path)
    save_weights(model, tmp_path / "best.safetensors")
    rebuilt = load_model(tmp_path).eval()
    x = BENCH.case_input(case, model).float()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    settings = [(m.tau, m.v_th, m.alpha, m.detach_reset) for m in model.modules() if hasattr(m, "detach_reset")]
    assert settings == [(m.tau, m.v_th, m.alpha, m.detach_reset) for m in rebuilt.modules()
                        if hasattr(m, "detach_reset")]


@needs_sj
def test_what_has_no_equivalent_is_refused_by_name() -> None:
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.model import qkformer, spike_driven_transformer, spikformer

    from spikformers.convert import ConversionError, from_spikingjelly

    small = dict(T=1, img_size_h=16, img_size_w=16, patch_size=4, embed_dims=32, num_heads=2, depths=1)
    with pytest.raises(ConversionError, match=r"patch_embed\.stages\.0\.neuron: IFNode"):
        from_spikingjelly(spikformer.Spikformer(spiking_neuron=neuron.IFNode, **small))
    with pytest.raises(ConversionError, match="soft reset"):
        from_spikingjelly(spikformer.Spikformer(v_reset=None, **small))
    with pytest.raises(ConversionError, match="qka_type='channel'"):
        from_spikingjelly(qkformer.QKFormer(embed_dims=32, num_heads=(1, 1, 1), depths=(1, 1, 1),
                                            qka_type="channel"))
    pooled_2x2 = spikformer.Spikformer(**small)
    pooled_2x2.patch_embed.stages[2].conv_bn.block[2] = torch.nn.MaxPool2d(2, 2)
    with pytest.raises(ConversionError, match=r"stages\.2\.conv_bn\.block: expected nothing or MaxPool2d\(3"):
        from_spikingjelly(pooled_2x2)
    with pytest.raises(ConversionError, match="16 x 8.*square"):
        from_spikingjelly(spikformer.Spikformer(**{**small, "img_size_w": 8}))
    assert from_spikingjelly(spikformer.Spikformer(**{**small, "img_size_w": 8}), img_size=16).img_size == 16
    with pytest.raises(ConversionError, match=r"blocks\.0\.mlp: hidden width = width"):
        from_spikingjelly(spike_driven_transformer.SpikeDrivenTransformer(embed_dims=32, depths=1, mlp_ratio=1.0))
    with pytest.raises(ConversionError, match="torch.nn.modules.linear.Linear is not supported"):
        from_spikingjelly(torch.nn.Linear(2, 2))


@needs_sj
def test_an_incomplete_key_map_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from spikformers.convert import ConversionError, spikingjelly
    from spikformers.convert.spikingjelly import KeyMap

    norm = spikingjelly._Plan.norm

    def forgetful(self, src: str, dst: str, part: tuple[int, int] = (0, 1)) -> None:  # type: ignore[no-untyped-def]
        norm(self, src, dst, part)
        if src == "blocks.0.mlp.fc2.1":
            self.keys.remove(KeyMap(f"{src}.running_var", f"{dst}.running_var", part))

    monkeypatch.setattr(spikingjelly._Plan, "norm", forgetful)
    with pytest.raises(ConversionError, match=r"unused \['blocks\.0\.mlp\.fc2\.1\.running_var'\].*"
                                              r"unfilled \['blocks\.0\.mlp\.fc2\.bn\.running_var'\]"):
        spikingjelly.from_spikingjelly(CASES["spikformer_small_frames"].build())


# --- the builder options the conversion uses: defaults unchanged, each option doing what it says -------------


def test_builder_options_keep_defaults_and_change_what_they_name() -> None:
    base = create_model("spikformer_2_64_cifar")
    assert count_parameters(create_model("spikformer_2_64_cifar", sps_pool="membrane")) == count_parameters(base)
    hidden, dim, depth = 256, 64, 2
    assert count_parameters(base) - count_parameters(create_model("spikformer_2_64_cifar", mlp_bias=False)) \
        == depth * (hidden + dim)
    assert count_parameters(base) - count_parameters(
        create_model("spikformer_2_64_cifar", attn_kwargs={"proj_bias": False})) == depth * dim
    hst = create_model("qkformer_4_96")
    assert hst.stage1[0].attn.heads == hst.stage3[0].attn.heads == 12
    per_stage = create_model("qkformer_4_64", heads=(1, 2, 4), conv_bias=True,
                             attn_early_kwargs={"q_split": False, "proj_bias": False})
    assert [s[0].attn.heads for s in per_stage.stages()] == [1, 2, 4]
    assert per_stage.patch_embed1.convs[0].conv.conv.bias is not None
    assert per_stage.stage1[0].attn.proj.linear.bias is None
    sdt = create_model("sdt_2_64_cifar", sps_form="sdt", sps_bias=True, head_neuron=True)
    assert count_parameters(sdt) - count_parameters(create_model("sdt_2_64_cifar")) == 8 + 16 + 32 + 64
    assert sdt.embed.stages[3].neuron is None and sdt.head_neuron.v_th == 1.0  # the last SPS stage: no neuron
    with pytest.raises(ValueError, match="one count or 3 counts"):
        create_model("qkformer_4_64", heads=(1, 2))
    with pytest.raises(ValueError, match="SPS pool must be 'spikes' or 'membrane'"):
        create_model("spikformer_2_64_cifar", sps_pool="before")


def test_membrane_pooling_pools_the_norm_output() -> None:
    """``sps_pool="membrane"``: the LIF integrates the max over the batch norm's output, not the max of spikes
    (the two differ only over several steps: one step of a LIF is monotone, so it commutes with the max)."""
    torch.manual_seed(0)
    model = create_model("spikformer_1_32_cifar", T=4, img_size=8, sps_pool="membrane").eval()
    stage = model.embed.stages[2]  # a pooling stage, 8 -> 16 channels
    with torch.no_grad():
        stage.conv.conv.weight.normal_()
    x = (torch.rand(4, 1, 8, 8, 8) < 0.5).float()  # [T, B, C, H, W] spikes
    pool = torch.nn.functional.max_pool2d
    with torch.no_grad():
        membrane = stage.conv(x)
        expected = stage.neuron(pool(membrane.flatten(0, 1), 3, 2, 1).unflatten(0, (4, 1)))
        assert torch.equal(stage(x), expected)
        stage.pool_membrane = False
        spikes = pool(stage.neuron(membrane).flatten(0, 1), 3, 2, 1).unflatten(0, (4, 1))
        assert torch.equal(stage(x), spikes)
    assert not torch.equal(expected, spikes)


def test_sdt_embedding_and_head_neuron() -> None:
    """``sps_form="sdt"``: real-valued embedding ``BN(Conv(LIF(u))) + u`` with ``u`` the last stage's norm output;
    ``head_neuron``: a LIF over time on the token means before the head, also under T-chunked inference."""
    from spikformers.memory import chunked_forward

    torch.manual_seed(0)
    model = create_model("sdt_1_32_cifar", T=4, img_size=8, sps_form="sdt", head_neuron=True).eval()
    BENCH.randomize(model)  # weights and statistics under which the layers fire
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        u = model.embed.stages(model.check_input(x))
        embed = model.embed.rpe(model.embed.rpe_neuron(u)) + u
        assert torch.equal(model.embed(model.check_input(x)), embed.flatten(3).transpose(2, 3))
        assert not torch.equal(u, (u > 0.5).float())  # real-valued, not spikes
        pooled = model.forward_features(x).mean(2)
        assert torch.equal(model(x), model.head(model.head_neuron(pooled).mean(0)))
        assert not torch.equal(model(x), model.head(pooled.mean(0)))
        assert torch.equal(chunked_forward(model, x, 2), model(x))


def test_neuron_settings_by_name() -> None:
    model = create_model("spikformer_1_32_cifar", neurons={"blocks.0.mlp.*": {"detach_reset": False, "tau": 3}})
    assert (model.blocks[0].mlp.fc1.neuron.detach_reset, model.blocks[0].mlp.fc2.neuron.tau) == (False, 3.0)
    assert model.blocks[0].attn.q.neuron.detach_reset and model.blocks[0].attn.q.neuron.tau == 2.0
    assert model.default_cfg["config"]["neurons"] == {"blocks.0.mlp.*": {"detach_reset": False, "tau": 3}}
    with pytest.raises(ValueError, match="'blocks.9.*' matches no LIF neuron"):
        create_model("spikformer_1_32_cifar", neurons={"blocks.9.*": {"tau": 3.0}})
    with pytest.raises(ValueError, match="expected a mapping of LIF settings"):
        create_model("spikformer_1_32_cifar", neurons={"blocks.0.*": {"threshold": 0.5}})


@needs_sj
def test_parity_script_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = BENCH.main(["--case", "qkformer_small"])
    printed = capsys.readouterr().out
    assert len(rows) == 1 and rows[0]["spikes_identical"] and rows[0]["grads"] <= TOL
    assert "| `qkformer.QKFormer(T=3, in_channels=2" in printed and "| `qkformer_4_64` |" in printed
    assert "| yes (7) |" in printed
