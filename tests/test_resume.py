"""Resume: a run killed with SIGKILL mid-training and resumed ends with the same weights as an uninterrupted run;
the training state holds no pickle; a failed write leaves the previous state intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spikformers.train.checkpoint import load_train_state, save_train_state

EPOCHS = 4
ARGS = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", str(EPOCHS),
        "--batch-size", "32", "--lr", "1e-2", "--seed", "3", "--no-progress",
        "--set", "optim.warmup_epochs=1", "--set", "data.limit_train=192", "--set", "data.limit_test=96",
        "--set", "deterministic=true", "--set", "train.tensorboard=false",
        "--set", "train.ema=true", "--set", "train.ema_decay=0.9"]  # EMA state must survive the restart too
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _spikformers(*args: str) -> list[str]:
    return [sys.executable, "-m", "spikformers", "train", *args]


def _state_epoch(run: Path) -> int:
    try:
        return int(load_train_state(run / "state.safetensors")[1]["epoch"])
    except Exception:  # not written yet
        return 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """An uninterrupted run, and a run killed after its second saved epoch and then resumed (one at a time)."""
    base = tmp_path_factory.mktemp("resume")
    ref, cut = base / "ref", base / "cut"
    subprocess.run(_spikformers(*ARGS, "--out", str(ref)), env=ENV, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_spikformers(*ARGS, "--out", str(cut)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _state_epoch(cut) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _state_epoch(cut)
    done = subprocess.run(_spikformers("--resume", str(cut), "--no-progress"), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return ref, cut, killed_at


def test_killed_and_resumed_run_equals_uninterrupted(runs: tuple[Path, Path, int]) -> None:
    ref, cut, killed_at = runs
    assert killed_at >= 1 and killed_at < EPOCHS  # it really died mid-run
    for name in ("last.safetensors", "ema.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(cut / name))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    ref_rows = (ref / "metrics.csv").read_text().splitlines()
    cut_rows = (cut / "metrics.csv").read_text().splitlines()
    assert len(cut_rows) == EPOCHS + 1
    # epoch .. test_acc agree (images/s and seconds differ)
    assert [r.split(",")[:6] for r in ref_rows] == [r.split(",")[:6] for r in cut_rows]


def test_training_state_is_safetensors_plus_json(runs: tuple[Path, Path, int]) -> None:
    _, cut, _ = runs
    tensors, meta = load_train_state(cut / "state.safetensors")
    assert meta["epoch"] == EPOCHS and len(meta["rng"]) == 1
    assert {"python", "numpy", "torch", "loader"} <= set(meta["rng"][0])
    assert any(k.startswith("optim.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    assert not list(cut.glob(".*.tmp*"))  # no temporary files left behind


def test_failed_write_keeps_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.safetensors"
    save_train_state(path, {"w": torch.ones(3)}, {"epoch": 1})
    import safetensors.torch

    def dies_midway(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a header")
        raise KeyboardInterrupt  # stands in for a kill during the write

    monkeypatch.setattr(safetensors.torch, "save_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_train_state(path, {"w": torch.zeros(3)}, {"epoch": 2})
    tensors, meta = load_train_state(path)
    assert meta["epoch"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


def test_resume_of_a_folder_without_state_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spikformers.cli import main

    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no state.safetensors" in capsys.readouterr().err
