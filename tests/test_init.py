"""``train --init``: fine-tuning starts from the weights of another run or checkpoint, head aside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spikformers import create_model
from spikformers.cli import main
from spikformers.train.checkpoint import save_model_config, save_weights
from spikformers.train.config import ConfigError
from spikformers.train.engine import load_init_weights


def _run_folder(tmp_path: Path, name: str, **overrides) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = create_model(name, **overrides)
    for t in model.state_dict().values():  # every weight and statistic away from its fresh value
        if t.is_floating_point():
            t.copy_(torch.randn_like(t).abs() + 0.5)
    run = tmp_path / "source"
    run.mkdir()
    save_model_config(model, run)
    save_weights(model, run / "last.safetensors", {"epoch": "1"})
    return run, {k: v.clone() for k, v in model.state_dict().items()}


def test_init_copies_every_tensor_and_keeps_another_head_fresh(tmp_path: Path) -> None:
    run, source = _run_folder(tmp_path, "spikformer_1_32_cifar", num_classes=100)
    model = create_model("spikformer_1_32_cifar", num_classes=10)
    fresh_head = model.head.weight.detach().clone()
    lines = load_init_weights(model, str(run), "spikformer_1_32_cifar")
    state = model.state_dict()
    for key, value in source.items():
        if key.startswith("head."):
            continue
        assert torch.equal(state[key], value), key
    assert torch.equal(model.head.weight, fresh_head)  # 100 -> 10 classes: the head starts fresh
    assert any("head.weight" in line and "kept fresh" in line for line in lines)


def test_init_refuses_weights_of_another_body(tmp_path: Path) -> None:
    run, _ = _run_folder(tmp_path, "spikformer_1_32_cifar")
    with pytest.raises(ConfigError, match=r"init.*do not fit.*shapes that differ"):
        load_init_weights(create_model("spikformer_1_64_cifar"), str(run), "spikformer_1_64_cifar")
    with pytest.raises(ConfigError, match="no run folder or checkpoint"):
        load_init_weights(create_model("spikformer_1_32_cifar"), str(tmp_path / "nope"), "spikformer_1_32_cifar")


def test_train_init_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, source = _run_folder(tmp_path, "spikformer_1_32_cifar", in_chans=1, img_size=16)  # sized for digits
    out = tmp_path / "finetuned"
    # learning rate at the smallest step the config takes, so the trained weights stay the source's to rounding
    rc = main(["train", "--model", "spikformer_1_32_cifar", "--init", str(run), "--out", str(out), "--epochs", "1",
               "--no-progress", "--set", "optim.lr=1e-30", "--set", "optim.warmup_lr=0", "--set", "optim.min_lr=0",
               "--set", "optim.weight_decay=0", "--set", "data.limit_train=64", "--set", "data.limit_test=32"])
    assert rc == 0, capsys.readouterr().err
    assert f"init: {len(source)} tensors from {run}" in capsys.readouterr().out
    from safetensors.torch import load_file

    trained = load_file(str(out / "last.safetensors"))
    weights = [k for k in source if k.endswith("weight")]
    assert weights and all(torch.allclose(trained[k], source[k], atol=1e-6) for k in weights)
    assert main(["train", "--model", "spikformer_1_32_cifar", "--init", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert not (tmp_path / "x").exists()
