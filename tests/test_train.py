"""Training smoke test, checkpoint round trip, bad checkpoints, config validation and the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spikformers.cli import main
from spikformers.train.checkpoint import CheckpointError, load_model, save_model_config, save_weights
from spikformers.train.config import ConfigError, load_config


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads can run many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch run of a tiny Spikformer on the real digits (about 15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--model", "spikformer_1_64_cifar", "--epochs", "3", "--batch-size", "64", "--lr", "1e-2",
               "--T", "2", "--out", str(out), "--no-progress", "--set", "optim.warmup_epochs=1"])
    assert rc == 0
    return out


def test_training_learns_and_writes_run_folder(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("config.yaml", "model.json", "metrics.csv", "best.safetensors", "last.safetensors", "summary.json"):
        assert (trained_run / name).is_file(), name
    rows = (trained_run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 4
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_acc"] > 50.0  # chance is 10%; 3 short epochs already learn the digits


def test_eval_reproduces_recorded_accuracy(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(trained_run)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    recorded = json.loads((trained_run / "summary.json").read_text())["test_acc"]
    assert last.startswith("held-out accuracy:") and f"{recorded:.2f}%" in last


def test_eval_in_time_chunks_gives_the_same_accuracy(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(trained_run), "--chunk", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    recorded = json.loads((trained_run / "summary.json").read_text())["test_acc"]
    assert "T in chunks of 1" in out[-2] and f"{recorded:.2f}%" in out[-1]
    assert main(["eval", "--checkpoint", str(trained_run), "--chunk", "0"]) == 2
    assert "--chunk must be >= 1, got 0" in capsys.readouterr().err


def test_eval_in_time_chunks_names_what_cannot_be_chunked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spikformers import create_model

    model = create_model("spiliformer_2_64_cifar", img_size=16, in_chans=1, T=2)
    save_model_config(model, tmp_path)
    save_weights(model, tmp_path / "last.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path), "--chunk", "1"]) == 2
    err = capsys.readouterr().err
    assert "--chunk 1: chunked_forward does not support SpiLiFormer" in err


def test_checkpoint_round_trip(trained_run: Path, tmp_path: Path) -> None:
    from spikformers import create_model

    # a model whose every parameter and buffer differs from a fresh build's, saved and rebuilt from the folder
    torch.manual_seed(1)
    model = create_model("spikformer_1_64_cifar", img_size=16, in_chans=1, T=2)
    with torch.no_grad():
        for i, t in enumerate(model.state_dict().values()):
            t.copy_(torch.rand_like(t) + 0.5 if t.is_floating_point() else torch.full_like(t, 7 + i))
    save_model_config(model, tmp_path)
    save_weights(model, tmp_path / "last.safetensors")
    loaded = load_model(tmp_path, "last")
    fresh = create_model("spikformer_1_64_cifar", img_size=16, in_chans=1, T=2).state_dict()
    assert loaded.default_cfg["architecture"] == "spikformer_1_64_cifar" and loaded.T == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert not torch.equal(fresh[key], value), key
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    # the trained run: best.safetensors holds the epoch with the highest test accuracy in metrics.csv, last the final
    from safetensors import safe_open

    rows = [r.split(",") for r in (trained_run / "metrics.csv").read_text().strip().splitlines()[1:]]
    accs = [float(r[5]) for r in rows]
    for which, epoch in (("best", accs.index(max(accs)) + 1), ("last", len(rows))):
        with safe_open(str(trained_run / f"{which}.safetensors"), framework="pt") as f:
            meta = f.metadata()
        assert int(meta["epoch"]) == epoch and round(float(meta["test_acc"]), 2) == accs[epoch - 1], which


def test_checkpoint_of_another_architecture_names_keys(trained_run: Path, tmp_path: Path) -> None:
    from spikformers import create_model

    other = create_model("spikformer_2_64_cifar", img_size=16, in_chans=1)
    save_model_config(other, tmp_path)
    # weights of the 1-block run under a 2-block model.json: keys of block 1 are missing
    (tmp_path / "last.safetensors").write_bytes((trained_run / "last.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks\.1\."):
        load_model(tmp_path, "last")
    wide = create_model("spikformer_1_128_cifar", img_size=16, in_chans=1)
    save_weights(wide, tmp_path / "last.safetensors")
    (tmp_path / "model.json").write_text((trained_run / "model.json").read_text())
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\): .*checkpoint \(128,\) vs model \(64,\)"):
        load_model(tmp_path, "last")


def test_corrupt_checkpoint_is_reported(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text((trained_run / "model.json").read_text())
    (tmp_path / "last.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path, "last")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path, "last")


def test_config_rejects_unknown_keys_and_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'optim.lrate'"):
        load_config(None, ["optim.lrate=0.1"])
    with pytest.raises(ConfigError, match="'data.batch_size'.*expected int"):
        load_config(None, ["data.batch_size=big"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: spikformer_2_64_cifar\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.depth'"):
        load_config(bad)
    cfg = load_config(None, ["optim.lr=1e-3", "model.kwargs={mlp_ratio: 2}"])
    assert cfg.optim.lr == 1e-3 and cfg.model.kwargs == {"mlp_ratio": 2}


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--set", "optim.nope=1"]) == 2
    assert "unknown config key 'optim.nope'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "/nonexistent/run"]) == 2


def test_nan_loss_stops_with_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spikformers.train import engine
    from spikformers.train.engine import TrainingError, train

    real = engine.build_criterion

    def nan_from_the_second_step(cfg, mixup):  # type: ignore[no-untyped-def]
        base, calls = real(cfg, mixup), []

        def criterion(logits, target):  # type: ignore[no-untyped-def]
            calls.append(1)
            return base(logits, target) * (float("nan") if len(calls) > 1 else 1.0)

        return criterion

    monkeypatch.setattr(engine, "build_criterion", nan_from_the_second_step)  # a NaN lr is refused up front now
    cfg = load_config(None, ["model.name=spikformer_1_64_cifar", "optim.epochs=1", "progress=false",
                             f"out={tmp_path}", "model.T=1"])
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, step 1"):
        train(cfg)


def test_models_command_lists_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "spikformer_4_*_cifar"]) == 0
    out = capsys.readouterr().out
    assert "spikformer_4_384_cifar" in out and "9.325" in out and "4.155" in out


# ---------------------------------------------------------------------------------------------------------
# paper-scale features: schedule, SpiLiFormer beta, EMA + mixup + bf16, early config errors


def test_lr_schedule_warmup_cosine_cooldown() -> None:
    from spikformers.train.engine import lr_at

    cfg = load_config(None, ["optim.lr=1e-3", "optim.min_lr=1e-5", "optim.warmup_lr=1e-6", "optim.warmup_epochs=2",
                             "optim.epochs=10", "optim.cooldown_epochs=3"])
    assert lr_at(0, cfg) == pytest.approx(1e-6) and lr_at(2, cfg) == pytest.approx(1e-3)
    assert lr_at(1, cfg) == pytest.approx((1e-6 + 1e-3) / 2)
    assert lr_at(6, cfg) == pytest.approx((1e-3 + 1e-5) / 2)  # half way through the cosine
    assert lr_at(10, cfg) == lr_at(12.5, cfg) == pytest.approx(1e-5)  # cool-down stays at min_lr
    assert all(lr_at(e, cfg) >= lr_at(e + 0.5, cfg) for e in range(2, 12))


def test_spiliformer_beta_ramp_reaches_the_model(tmp_path: Path) -> None:
    from spikformers.train.engine import beta_at, train

    cfg = load_config(None, ["model.name=spiliformer_2_64_cifar", "model.T=1", "data.img_size=8", "optim.epochs=2",
                             "optim.warmup_epochs=0", "data.limit_train=32", "data.limit_test=16", "progress=false",
                             "train.beta=0.2", "train.beta_end=0.6", "train.tensorboard=false", f"out={tmp_path}"])
    assert [beta_at(e, cfg, 3) for e in range(3)] == pytest.approx([0.2, 0.4, 0.6])
    train(cfg)
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[-1] == "beta" and [r.split(",")[-1] for r in rows[1:]] == ["0.2", "0.6"]


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_run_keeps_freed_memory_as_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    from spikformers.train import runtime
    from spikformers.train.engine import train

    calls: list[int] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda *a: calls.append(1) or True)
    cfg = load_config(None, ["model.name=spikformer_1_64_cifar", "model.T=1", "data.img_size=8", "optim.epochs=1",
                             "optim.warmup_epochs=0", "data.limit_train=16", "data.limit_test=16", "progress=false",
                             f"train.keep_freed_memory={str(keep).lower()}", "train.tensorboard=false",
                             f"out={tmp_path}"])
    train(cfg)
    assert calls == ([1] if keep else [])


def test_ema_mixup_bf16_run_is_reproduced_by_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", "2",
               "--amp", "bf16", "--out", str(tmp_path), "--no-progress", "--set", "data.limit_train=64",
               "--set", "data.limit_test=64", "--set", "data.batch_size=16", "--set", "mixup.mixup_alpha=0.8",
               "--set", "mixup.cutmix_alpha=1.0", "--set", "mixup.off_epoch=1", "--set", "optim.label_smoothing=0.1",
               "--set", "optim.clip_grad=1.0", "--set", "train.ema=true", "--set", "train.ema_decay=0.5",
               "--set", "train.ema_eval=true", "--set", "train.tensorboard=false"])
    assert rc == 0
    trained = capsys.readouterr().out.strip().splitlines()[-1]
    header, *rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    ema_col = header.split(",").index("ema_test_acc")
    assert all(r.split(",")[ema_col] == r.split(",")[header.split(",").index("test_acc")] for r in rows)
    assert (tmp_path / "ema.safetensors").is_file()
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 0
    evaluated = capsys.readouterr().out.strip().splitlines()[-1]
    assert trained.split("%")[0] == evaluated.split("%")[0]  # "held-out accuracy: X.XX"


@pytest.mark.parametrize("overrides, message", [
    (["train.beta=0.5"], "'train.beta': spikformer_1_64_cifar has no second-pass weight"),
    (["train.ema_eval=true"], "'train.ema_eval' needs 'train.ema: true'"),
    (["train.amp=fp8"], r"'train.amp': expected one of \['none', 'bf16', 'fp16'\]"),
    (["mixup.mixup_alpha=0.5", "data.batch_size=33"], "mixup needs an even batch"),
    (["train.neuron_saved=q8"], r"'train.neuron_saved': expected one of \['auto', 'exact', 'recompute'"),
    (["train.neuron_backend=cuda"], r"'train.neuron_backend': expected one of \['auto', 'cpp', 'triton'"),
])
def test_bad_loop_settings_are_rejected_before_training(overrides: list[str], message: str, tmp_path: Path) -> None:
    from spikformers.train.engine import train

    with pytest.raises(ConfigError, match=message):
        train(load_config(None, ["model.name=spikformer_1_64_cifar", "progress=false", f"out={tmp_path}",
                                 *overrides]))
    assert not (tmp_path / "metrics.csv").exists()


def test_speed_options_reach_the_model_and_are_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spikformers.kernels import get_kernel_config
    from spikformers.memory import _CheckpointedForward, backbone_blocks
    from spikformers.neurons import LIF
    from spikformers.train import engine

    seen = {}
    real = engine.apply_speed_options

    def spy(model, cfg):  # type: ignore[no-untyped-def]
        real(model, cfg)
        lifs = [m for m in model.modules() if isinstance(m, LIF)]
        switches = get_kernel_config()
        seen.update(saved={m.saved for m in lifs}, backend={m.backend for m in lifs}, sparse=switches.event_driven,
                    compact=switches.compact_spikes, units=switches.fused_bn_neuron,
                    lean=all(m.recompute_bn_neuron for m in model.modules() if hasattr(m, "recompute_bn_neuron")),
                    ckpt=all(isinstance(b.__dict__.get("forward"), _CheckpointedForward)
                             and b.forward.enabled for b in backbone_blocks(model)))

    monkeypatch.setattr(engine, "apply_speed_options", spy)
    cfg = load_config(None, ["model.name=spikformer_1_64_cifar", "model.T=2", "data.img_size=8", "optim.epochs=1",
                             "optim.warmup_epochs=0", "data.limit_train=32", "data.limit_test=16", "progress=false",
                             "train.tensorboard=false", "train.neuron_saved=q24", "train.neuron_backend=eager",
                             "train.event_driven=false", "train.compact_spikes=false", "train.grad_checkpointing=true",
                             "train.recompute_bn_neuron=true", "train.fused_bn_neuron=false",
                             f"out={tmp_path}"])
    before = get_kernel_config()
    engine.train(cfg)
    assert seen == {"saved": {"q24"}, "backend": {"eager"}, "sparse": False, "compact": False, "units": False,
                    "ckpt": True, "lean": True}
    assert get_kernel_config() == before and before.event_driven  # the process-wide switches are put back
