"""Checkpoints trained elsewhere load as spikformers models: spikingjelly zoo state dicts, the official Spikformer,
QKFormer and Spike-driven Transformer layouts, the containers training scripts write, our own run and Hub folders.

The official layouts are tested from their key lists (tests/data/official_keys/*.json: every tensor name and
shape of the official model code, built at a small configuration): a fake checkpoint of random tensors with
exactly those names must map with no key left over in either direction. Loading never runs code from a file: a
pickle naming a function or an unknown class is refused before anything of it is called.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from spikformers import create_model
from spikformers.cli import main
from spikformers.convert import ConversionError, import_checkpoint, save_hub_folder
from spikformers.train.checkpoint import CheckpointError, load_model

needs_sj = pytest.mark.skipif(importlib.util.find_spec("spikingjelly") is None,
                              reason="spikingjelly is not installed (pip install spikingjelly==2.0.0)")
KEY_LISTS = sorted((Path(__file__).parent / "data" / "official_keys").glob("*.json"))
# what each official model builds and never uses: exactly these keys may be left out
UNUSED = {
    "spikformer_cifar10.json": r"block\.\d+\.norm[12]\.(weight|bias)",
    "spikformer_imagenet.json": r"block\.\d+\.norm[12]\.(weight|bias)",
    "spikformer_cifar10dvs.json": r"block\.\d+\.norm[12]\.(weight|bias)|pos_embed|norm\.(weight|bias)",
    "sdt_v1.json": r"block\.\d+\.attn\.talking_heads\.weight",
}

# spot checks of the key maps, written from reading the official code: (source key, spikformers key)
PAIRS = {
    "spikformer_cifar10": [("patch_embed.proj_conv.weight", "embed.stages.0.conv.conv.weight"),
                           ("patch_embed.proj_bn2.running_mean", "embed.stages.2.conv.bn.running_mean"),
                           ("patch_embed.rpe_conv.weight", "embed.rpe.conv.weight"),
                           ("block.1.attn.k_linear.bias", "blocks.1.attn.k.linear.bias"),
                           ("block.0.attn.proj_bn.weight", "blocks.0.attn.proj.bn.weight"),
                           ("block.0.mlp.fc2_linear.weight", "blocks.0.mlp.fc2.linear.weight")],
    "spikformer_imagenet": [("patch_embed.proj_conv3.weight", "embed.stages.3.conv.conv.weight"),
                            ("block.1.attn.v_conv.weight", "blocks.1.attn.v.linear.weight"),
                            ("block.0.mlp.fc1_bn.running_var", "blocks.0.mlp.fc1.bn.running_var")],
    "spikformer_cifar10dvs": [("patch_embed.rpe_bn.bias", "embed.rpe.bn.bias"),
                              ("block.1.attn.q_conv.weight", "blocks.1.attn.q.linear.weight"),
                              ("block.0.mlp.fc2_conv.bias", "blocks.0.mlp.fc2.linear.bias")],
    "qkformer_imagenet": [("patch_embed1.proj_bn.weight", "patch_embed1.convs.0.conv.bn.weight"),
                          ("patch_embed1.proj2_conv.weight", "patch_embed1.convs.2.conv.conv.weight"),
                          ("patch_embed1.proj_res_bn.running_var", "patch_embed1.shortcut.conv.bn.running_var"),
                          ("patch_embed2.proj3_conv.weight", "patch_embed2.convs.0.conv.conv.weight"),
                          ("patch_embed3.proj4_bn.bias", "patch_embed3.convs.1.conv.bn.bias"),
                          ("stage2.1.tssa.k_conv.weight", "stage2.1.attn.k.linear.weight"),
                          ("stage1.0.tssa.proj_bn.running_mean", "stage1.0.attn.proj.bn.running_mean"),
                          ("stage3.1.attn.v_bn.weight", "stage3.1.attn.v.bn.weight"),
                          ("stage3.0.mlp.fc2_conv.bias", "stage3.0.mlp.fc2.linear.bias")],
    "qkformer_cifar10": [("patch_embed1.proj1_conv.weight", "patch_embed1.convs.1.conv.conv.weight"),
                         ("patch_embed2.proj_res_conv.weight", "patch_embed2.shortcut.conv.conv.weight"),
                         ("stage3.1.ssa.q_conv.weight", "stage3.1.attn.q.linear.weight"),
                         ("stage1.0.mlp.mlp2_bn.weight", "stage1.0.mlp.fc2.bn.weight")],
    "sdt_v1": [("patch_embed.proj_conv1.weight", "embed.stages.1.conv.conv.weight"),
               ("patch_embed.rpe_conv.weight", "embed.rpe.conv.weight"),
               ("block.1.attn.k_conv.weight", "blocks.1.attn.k.linear.weight"),
               ("block.0.attn.proj_conv.bias", "blocks.0.attn.proj.linear.bias"),
               ("block.1.mlp.fc1_bn.running_mean", "blocks.1.mlp.fc1.bn.running_mean")],
}


def fake_state(doc: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of a key list (batch-norm statistics in their ranges)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in doc["keys"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 100, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.5
    return state


def official_args(doc: dict) -> argparse.Namespace:
    """The argparse args a training script saves beside the weights (SDT's name its stem pooling)."""
    built = doc["built"]
    heads = re.search(r"num_heads=(\d+)", built)
    return argparse.Namespace(time_steps=2, num_heads=int(heads[1]) if heads else None, pooling_stat="0011",
                              spike_mode="lif", dvs_mode=False, model="sdt", lr=3e-4, opt_betas=None)


# --- official layouts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KEY_LISTS, ids=lambda p: p.stem)
def test_official_layout_maps_every_key_both_ways(path: Path, tmp_path: Path) -> None:
    doc = json.loads(path.read_text())
    state = fake_state(doc)
    ckpt = tmp_path / "checkpoint-299.pth"
    torch.save({"model": state, "args": official_args(doc), "epoch": 299, "optimizer": {"state": {}}}, ckpt)
    imported = import_checkpoint(ckpt, img_size=32)

    assert imported.name == doc["spikformers_model"]
    model = imported.model
    targets = [k.target for k in imported.keys]
    assert sorted(targets) == sorted(model.state_dict())  # every target key filled, each once
    assert {k.source for k in imported.keys} | set(imported.ignored) == set(state)  # every source key consumed
    assert not {k.source for k in imported.keys} & set(imported.ignored)
    unused = UNUSED.get(path.name)
    assert all(re.fullmatch(unused, k) for k in imported.ignored) if unused else not imported.ignored
    pairs = {(k.source, k.target) for k in imported.keys}
    assert all(pair in pairs for pair in PAIRS[path.stem]), set(PAIRS[path.stem]) - pairs
    ours = model.state_dict()
    for km in imported.keys:  # the values went where the map says, reshaped only as it says
        assert torch.equal(ours[km.target], km.apply(state[km.source]).to(ours[km.target].dtype)), km
        assert km.squeeze == (state[km.source].dim() > 2 and ours[km.target].dim() == 2)
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, model.in_chans, 32, 32))
    assert logits.shape == (2, state["head.weight"].shape[0]) and torch.isfinite(logits).all()
    assert imported.settings["T"] == (2, "checkpoint args.time_steps")


def test_each_official_layout_is_recognised_and_differs_where_the_code_does() -> None:
    found = {}
    for path in KEY_LISTS:
        doc = json.loads(path.read_text())
        imported = import_checkpoint_state(fake_state(doc), doc, None if "sdt" not in path.name else "sdt_2_64_cifar")
        found[path.stem] = imported
    assert {k: v.source for k, v in found.items()} == {
        "qkformer_cifar10": "qkformer-official", "qkformer_imagenet": "qkformer-official",
        "sdt_v1": "sdt-official", "spikformer_cifar10": "spikformer-official",
        "spikformer_cifar10dvs": "spikformer-official", "spikformer_imagenet": "spikformer-official"}
    cfg = {k: v.model.default_cfg["config"] for k, v in found.items()}
    assert cfg["spikformer_cifar10"]["qkv_bias"] and not cfg["spikformer_imagenet"]["qkv_bias"]
    assert cfg["spikformer_cifar10dvs"]["attn_defaults"] == {"scale": 0.25}
    assert (cfg["sdt_v1"]["sps_form"], cfg["sdt_v1"]["head_neuron"]) == ("sdt", True)
    assert found["qkformer_imagenet"].model.depths == (1, 2, 2)
    # heads are not in the weights: the training args, else the official code's own choice
    assert found["qkformer_imagenet"].settings["heads"] == (2, "checkpoint args.num_heads")
    assert found["qkformer_cifar10"].settings["heads"][0] == 8  # cifar10/model.py ignores its num_heads argument
    bare = import_checkpoint_state(fake_state(_doc("qkformer_imagenet")), {"built": "num_heads=None"})
    assert bare.settings["heads"] == (1, "official code: the QKFormer_10_384/512/768 factories use dim / 64 heads")
    assert found["spikformer_imagenet"].settings["T"] == (2, "checkpoint args.time_steps")


def import_checkpoint_state(state: dict, doc: dict, name: str | None = None, **overrides: object):  # type: ignore
    """import_checkpoint of an in-memory state dict (written to a temporary file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ckpt.pth"
        torch.save({"state_dict": state, "args": official_args(doc)}, path)
        return import_checkpoint(path, name, img_size=32, **overrides)


def _doc(stem: str) -> dict:
    return json.loads((Path(__file__).parent / "data" / "official_keys" / f"{stem}.json").read_text())


def test_partial_or_wrong_file_is_refused_naming_the_keys(tmp_path: Path) -> None:
    doc = _doc("spikformer_imagenet")
    state = fake_state(doc)
    partial = {k: v for k, v in state.items() if k != "block.1.attn.k_bn.running_var"}
    with pytest.raises(ConversionError, match=r"target keys unfilled \['blocks\.1\.attn\.k\.bn\.running_var'\]"):
        import_checkpoint_state(partial, doc)
    extra = {**state, "block.1.attn.k_extra.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"source keys unused \['block\.1\.attn\.k_extra\.weight'\]"):
        import_checkpoint_state(extra, doc)
    wrong = {**state, "block.0.mlp.fc2_bn.weight": torch.ones(65)}
    with pytest.raises(ConversionError, match=r"block\.0\.mlp\.fc2_bn\.weight \(65,\) -> blocks\.0\.mlp\.fc2\.bn\."
                                              r"weight \(64,\)"):
        import_checkpoint_state(wrong, doc)
    not_1x1 = {**state, "block.0.attn.q_conv.weight": torch.zeros(64, 64, 3)}
    with pytest.raises(ConversionError, match=r"block\.0\.attn\.q_conv\.weight: expected a 1x1 kernel"):
        import_checkpoint_state(not_1x1, doc)
    # our own names: missing / unexpected / mis-shaped keys, as a run folder's check reports them
    own = create_model("spikformer_1_32_cifar").state_dict()
    own.pop("blocks.0.attn.q.bn.running_mean")
    own["head.weight"] = torch.zeros(3, 32)
    torch.save(own, tmp_path / "own.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.0\.attn\.q\.bn\.running_mean"
                                              r"(.|\n)*head\.weight checkpoint \(3, 32\) vs model \(10, 32\)"):
        import_checkpoint(tmp_path / "own.pt", "spikformer_1_32_cifar")
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match=r"found no state dict.*keys are \['epoch', 'optimizer'\]"):
        import_checkpoint(tmp_path / "no_weights.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "alien.pth")
    with pytest.raises(ConversionError, match=r"matches no layout.*\['conv\.weight'\]"):
        import_checkpoint(tmp_path / "alien.pth")


def test_names_and_overrides_that_contradict_the_weights_are_refused(tmp_path: Path) -> None:
    doc = _doc("spikformer_cifar10")
    state = fake_state(doc)
    with pytest.raises(ConversionError, match="is spikformer_2_64_cifar, not spikformer_4_64_cifar"):
        import_checkpoint_state(state, doc, "spikformer_4_64_cifar")
    with pytest.raises(ConversionError, match="is spikformer_2_64_cifar, not spikformer_2_64"):
        import_checkpoint_state(state, doc, "spikformer_2_64")  # the cifar10 code pools the last two stages
    with pytest.raises(ConversionError, match="num_classes=7 contradicts the checkpoint: weights give num_classes=10"):
        import_checkpoint_state(state, doc, num_classes=7)
    assert import_checkpoint_state(state, doc, heads=4).model.blocks[0].attn.heads == 4  # not stored: given wins
    sdt = fake_state(_doc("sdt_v1"))
    for args, message in (({}, "name the model: sdt_2_64_cifar or sdt_2_64"),
                          ({"pooling_stat": "0011", "spike_mode": "plif"}, "spike_mode='plif'"),
                          ({"pooling_stat": "0011", "dvs_mode": True}, "erosion pooling"),
                          ({"pooling_stat": "0111"}, "pooling_stat='0111'"),
                          ({"pooling_stat": "0011", "mlp": 64}, "inner residual")):
        hidden = args.pop("mlp", None)
        if hidden:  # hidden width = width: the official MLP adds an inner residual then
            sdt = {k: v[:, :hidden] if ".mlp.fc2_conv.weight" in k else v[:hidden] if ".mlp.fc1_" in k and v.dim()
                   else v for k, v in sdt.items()}
        torch.save({"state_dict": sdt, "args": argparse.Namespace(**args)}, tmp_path / "sdt.pth")
        with pytest.raises(ConversionError, match=message):
            import_checkpoint(tmp_path / "sdt.pth")


# --- containers ------------------------------------------------------------------------------------------------


def test_containers_as_found_in_the_wild(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    doc = _doc("spikformer_cifar10")
    state, ema = fake_state(doc, seed=0), fake_state(doc, seed=1)
    ddp = {f"module.{k}": v for k, v in state.items()}
    files = {
        "model_best.pth.tar": {"state_dict": ddp, "state_dict_ema": ema, "args": official_args(doc), "epoch": 3,
                               "arch": "spikformer", "metric": 95.1, "version": 2},
        "checkpoint_max_test_acc1.pth": {"model": state, "lr_scheduler": {"base_lrs": [1e-3]}, "max_test_acc1": 80.0},
        "bare.pth": state,
        "compiled.pt": {"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(state, str(tmp_path / "weights.safetensors"))
    reference = import_checkpoint(tmp_path / "bare.pth", img_size=32).model.state_dict()
    for name in [*files, "weights.safetensors"]:
        imported = import_checkpoint(tmp_path / name, img_size=32)
        assert all(torch.equal(v, reference[k]) for k, v in imported.model.state_dict().items()), name
    notes = import_checkpoint(tmp_path / "model_best.pth.tar").notes[0]
    assert "weights under ['state_dict'] (also holds state_dict_ema)" in notes and "'module.' prefix removed" in notes
    averaged = import_checkpoint(tmp_path / "model_best.pth.tar", ema=True, img_size=32).model
    assert torch.equal(averaged.blocks[0].attn.q.linear.weight, ema["block.0.attn.q_linear.weight"])
    assert not torch.equal(averaged.blocks[0].attn.q.linear.weight, state["block.0.attn.q_linear.weight"])
    with pytest.raises(CheckpointError, match="no averaged weights"):
        import_checkpoint(tmp_path / "bare.pth", ema=True)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth is not a readable torch.save checkpoint"):
        import_checkpoint(tmp_path / "broken.pth")


class Marker:
    """An unknown class whose construction would write a marker file."""

    def __init__(self, path: str) -> None:
        Path(path).write_text("ran")


def _payload(kind: str, marker: Path):  # type: ignore[no-untyped-def]
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            if kind == "function":  # unpickling calls os.system("touch MARKER")
                return (os.system, (f"touch {marker}",))
            return (Marker, (str(marker),))  # unpickling constructs Marker(MARKER)

    return Payload()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind,named", [("function", "posix.system" if os.name == "posix" else "nt.system"),
                                        ("class", "test_checkpoint_import.Marker")])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch, kind: str,
                                                                    named: str, legacy: bool) -> None:
    marker = tmp_path / "MARKER"
    state = create_model("spikformer_1_32_cifar").state_dict()
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1), "hook": _payload(kind, marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=rf"evil\.pth: refused, the file names \S*{re.escape(named)}"):
        import_checkpoint(path, "spikformer_1_32_cifar")
    if not legacy:  # a zip checkpoint is refused from the names it lists, before torch.load unpickles anything
        with monkeypatch.context() as m:
            m.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on a refused file"))
            with pytest.raises(CheckpointError, match="refused"):
                import_checkpoint(path, "spikformer_1_32_cifar")
    assert main(["convert", str(path), "--model", "spikformer_1_32_cifar", "--out", str(tmp_path / "run")]) == 2
    assert "refused, the file names" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()
    pickle.loads(pickle.dumps(_payload(kind, marker)))  # the payload is real: plain unpickling runs it
    assert marker.exists()


# --- spikingjelly 2.0 state dicts ------------------------------------------------------------------------------


@needs_sj
def test_spikingjelly_spikformer_cifar10_state_dict_gives_spikingjellys_logits(tmp_path: Path) -> None:
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import spikformer

    torch.manual_seed(0)
    sj = spikformer.spikformer_cifar10(T=2).eval()  # two steps: where the stem pools matters only over time
    torch.save(sj.state_dict(), tmp_path / "spikformer_cifar10.pth")
    with pytest.raises(ConversionError, match="name the model: spikformer_4_384_cifar or spikformer_4_384"):
        import_checkpoint(tmp_path / "spikformer_cifar10.pth")
    imported = import_checkpoint(tmp_path / "spikformer_cifar10.pth", "spikformer_4_384_cifar", T=2)
    assert imported.source == "spikingjelly"
    assert imported.settings["heads"] == (12, "spikingjelly's spikformer_cifar10")
    assert imported.settings["sps_pool"] == ("membrane", "spikingjelly network")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = sj(x).mean(0)
        functional.reset_net(sj)
        assert torch.equal(imported.model.eval()(x), theirs)


@needs_sj
@pytest.mark.parametrize("family", ["qkformer", "sdt"])
def test_spikingjelly_qkformer_and_sdt_state_dicts(tmp_path: Path, family: str) -> None:
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import qkformer, spike_driven_transformer

    torch.manual_seed(0)
    if family == "qkformer":
        sj = qkformer.QKFormer(T=2, num_classes=5, embed_dims=64, num_heads=(1, 2, 4), depths=(1, 1, 2))
        name, given = None, {"heads": [1, 2, 4], "img_size": 32}
    else:
        sj = spike_driven_transformer.SpikeDrivenTransformer(T=2, num_classes=7, embed_dims=64, num_heads=4,
                                                             depths=2, pooling_stat="0011")
        name, given = "sdt_2_64_cifar", {"heads": 4, "drop_path_rate": 0.1}  # the last one on top of the network
    torch.save(sj.eval().state_dict(), tmp_path / "sj.pth")
    imported = import_checkpoint(tmp_path / "sj.pth", name, T=2, **given)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        functional.reset_net(sj)
        assert torch.equal(imported.model.eval()(x), sj(x))
    assert imported.name == ("qkformer_4_64" if family == "qkformer" else "sdt_2_64_cifar")
    if family == "sdt":  # an option spikingjelly's network has no say in, applied to the converted model
        assert imported.settings["drop_path_rate"] == (0.1, "given")
        assert imported.model.blocks[1].drop_path.p == 0.1
    partial = {k: v for k, v in sj.state_dict().items() if k != "head.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth does not fit .*\n  missing keys \(1\): head\.bias"):
        import_checkpoint(tmp_path / "partial.pth", name, T=2, **given)
    with pytest.raises(ConversionError, match=r"mlp_ratio=2\.0 contradicts the checkpoint: weights give mlp_ratio"):
        import_checkpoint(tmp_path / "sj.pth", name, T=2, **given, mlp_ratio=2.0)


@needs_sj
@pytest.mark.slow
def test_convert_then_eval_gives_spikingjellys_accuracy_on_digits(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """The must-show: spikingjelly's ``spikformer_cifar10()`` with a head fitted on digits, its state dict saved
    with torch.save, converted by ``spikformers convert`` and evaluated by ``spikformers eval`` on the bundled
    digits upsampled to 32 px (the gray channel repeated for its colour input): the same accuracy as
    spikingjelly's model on the same images, and the same prediction for every image."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model.spikformer import spikformer_cifar10

    from spikformers.data import create_dataset

    torch.manual_seed(0)
    sj = spikformer_cifar10()
    train = create_dataset("digits", None, "train", img_size=32, in_chans=3, augment=False)
    test = create_dataset("digits", None, "test", img_size=32, in_chans=3)
    # batch-norm statistics from 40 training digits (so that layers fire on digits), then a least-squares head
    norms = [m for m in sj.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # a cumulative average: one batch's statistics
        m.reset_running_stats()
    features = []
    hook = sj.head.register_forward_hook(lambda m, args, out: features.append(args[0].mean(0)))
    with torch.no_grad():
        sj.train()(train.tensors[0][:40])
    hook.remove()
    functional.reset_net(sj)
    for m in norms:
        m.momentum = 0.1
    a = torch.cat([features[0], torch.ones(40, 1)], 1)
    w = torch.linalg.solve(a.T @ a + 0.01 * torch.eye(a.shape[1]), a.T @ torch.eye(10)[train.tensors[1][:40]])
    with torch.no_grad():
        sj.head.weight.copy_(w[:-1].T)
        sj.head.bias.copy_(w[-1])
        images, labels = test.tensors[0][:32], test.tensors[1][:32]
        theirs = sj.eval()(images).mean(0).argmax(1)
        functional.reset_net(sj)
    sj_accuracy = 100.0 * (theirs == labels).float().mean().item()
    assert sj_accuracy > 15.0 and len(set(theirs.tolist())) > 2  # not a constant guess

    torch.save(sj.state_dict(), tmp_path / "spikformer_cifar10.pth")
    run = tmp_path / "run"
    assert main(["convert", str(tmp_path / "spikformer_cifar10.pth"), "--model", "spikformer_4_384_cifar",
                 "--set", "data.name=digits", "--set", "data.kwargs.in_chans=3", "--set", "data.limit_test=32",
                 "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "layout: spikingjelly.activation_based.model.spikformer.Spikformer (spikingjelly)" in printed
    assert "ignored 0 tensors" in printed
    assert main(["eval", "--checkpoint", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"held-out accuracy: {sj_accuracy:.2f}% (digits test split, 32 images)" in printed, (printed, sj_accuracy)
    print(f"spikingjelly {sj_accuracy:.2f} %, spikformers eval: {printed.strip().splitlines()[-1]}")
    with torch.no_grad():
        ours = load_model(run).eval()(images).argmax(1)
    assert torch.equal(ours, theirs)


# --- interfaces: convert, create_model, Hub folders, timm ------------------------------------------------------


def _official_file(tmp_path: Path, stem: str = "spikformer_cifar10", in_chans: int = 3) -> Path:
    """A fake official checkpoint (``in_chans``: input channels of its first conv, 1 for the grayscale digits)."""
    doc = _doc(stem)
    state = fake_state(doc)
    first = next(iter(state))
    state[first] = torch.randn(state[first].shape[0], in_chans, *state[first].shape[2:])
    path = tmp_path / f"{stem}.pth.tar"
    torch.save({"state_dict": state, "args": official_args(doc)}, path)
    return path


def test_convert_writes_a_run_folder_the_other_commands_read(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    ckpt, run = _official_file(tmp_path, in_chans=1), tmp_path / "run"
    assert main(["convert", str(ckpt), "--set", "model.kwargs.img_size=32", "--set", "data.limit_test=4",
                 "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "block.N.attn.q_linear -> blocks.N.attn.q.linear (4 tensors)" in printed
    assert "block.N.norm1.weight, block.N.norm1.bias, block.N.norm2.weight, block.N.norm2.bias: LayerNorm" in printed
    assert "converted spikformer-official checkpoint -> spikformer_2_64_cifar (116 tensors mapped, 8 ignored)" \
        in printed
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "conversion.json", "last.safetensors",
                                                     "model.json"]
    record = json.loads((run / "conversion.json").read_text())
    assert record["settings"]["num_classes"] == {"value": 10, "from": "weights"}
    assert len(record["keys"]) == 116 and len(record["ignored"]) == 8
    reference = import_checkpoint(ckpt, img_size=32).model.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(run).eval()(x), reference(x))
    # eval and energy read it as any run folder: digits (the default data), resized to the model's 32 px
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert "(digits test split, 4 images)" in capsys.readouterr().out
    assert main(["energy", "--checkpoint", str(run), "--images", "2"]) == 0
    capsys.readouterr()
    # an existing run folder is never written into
    before = (run / "last.safetensors").read_bytes()
    assert main(["convert", str(ckpt), "--out", str(run)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (run / "last.safetensors").read_bytes() == before
    assert main(["convert", str(ckpt), "--set", "optim.lr=1", "--out", str(tmp_path / "x")]) == 2
    assert "convert takes model.kwargs.KEY=VALUE and data.KEY=VALUE" in capsys.readouterr().err
    assert main(["convert", str(ckpt), "--source", "qkformer-official"]) == 2
    assert "the keys are those of ZK-Zhou/spikformer cifar10/model.py" in capsys.readouterr().err


def test_create_model_loads_any_supported_checkpoint(tmp_path: Path) -> None:
    ckpt = _official_file(tmp_path, "qkformer_imagenet")
    model = create_model("qkformer_5_64", checkpoint_path=ckpt, img_size=32)
    assert model.default_cfg["architecture"] == "qkformer_5_64" and model.stage3[0].attn.heads == 2  # args
    run = tmp_path / "run"
    assert main(["convert", str(ckpt), "--set", "model.kwargs.img_size=32", "--out", str(run)]) == 0
    again = create_model("qkformer_5_64", checkpoint_path=run)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())
    with pytest.raises(ConversionError, match="builds qkformer_5_64, not qkformer_4_64"):
        create_model("qkformer_4_64", checkpoint_path=run)


def test_hub_folder_loads_in_timm_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import timm.models._hub as timm_hub

    torch.manual_seed(0)
    model = create_model("spikformer_2_384_cifar", T=1, mlp_bias=False).eval()
    hub = save_hub_folder(model, tmp_path / "hub", pretrained_cfg={"mean": [0.5] * 3, "std": [0.25] * 3})
    config = json.loads((hub / "config.json").read_text())
    assert {k: config[k] for k in ("architecture", "num_classes", "model_args")} == {
        "architecture": "spikformer_2_384_cifar", "num_classes": 10, "model_args": {"T": 1, "mlp_bias": False}}
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["mean"] == [0.5] * 3
    fetched = []

    def hub_download(repo_id: str, filename: str, **kwargs: object) -> str:  # what timm would download
        fetched.append((repo_id, filename))
        return str(hub / filename)

    monkeypatch.setattr(timm_hub, "hf_hub_download", hub_download)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        from_hub = timm.create_model("hf-hub:someone/spikformer-test", pretrained=True)
        assert torch.equal(from_hub.eval()(x), expected)
        assert fetched == [("someone/spikformer-test", "config.json"), ("someone/spikformer-test",
                                                                         "model.safetensors")]
        assert torch.equal(timm.create_model(f"local-dir:{hub}", pretrained=True).eval()(x), expected)
        assert torch.equal(create_model("spikformer_2_384_cifar", checkpoint_path=hub).eval()(x), expected)
        # a file timm is pointed at: any format spikformers reads (here a state dict in our names)
        from_file = timm.create_model("spikformer_2_384_cifar", pretrained=True, T=1, mlp_bias=False,
                                      pretrained_cfg_overlay={"file": str(hub / "model.safetensors")})
        assert torch.equal(from_file.eval()(x), expected)
    with pytest.raises(ValueError, match="spikformers ships no pretrained weights"):
        timm.create_model("spikformer_2_384_cifar", pretrained=True)
    with pytest.raises(CheckpointError, match="exists and is not an empty folder"):
        save_hub_folder(model, hub)


def test_run_folder_and_hub_folder_convert_into_each_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, run, hub, back = _official_file(tmp_path), tmp_path / "run", tmp_path / "hub", tmp_path / "back"
    assert main(["convert", str(ckpt), "--set", "model.kwargs.img_size=32", "--out", str(run)]) == 0
    assert main(["convert", str(run), "--hub-out", str(hub)]) == 0
    assert main(["convert", str(hub), "--out", str(back)]) == 0
    assert "converted spikformers checkpoint -> spikformer_2_64_cifar (own format)" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = load_model(run).eval()(x)
        assert torch.equal(load_model(back).eval()(x), expected)
