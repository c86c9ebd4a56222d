"""Ctrl-C during training: where it stopped and the exact resume command, exit code 130, no traceback, and the
last written state intact (or, before any weights, no run folder left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spikformers.cli import main
from spikformers.train import engine
from spikformers.train.checkpoint import load_train_state

# 32 samples in batches of 16: 2 steps per epoch
TINY = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--batch-size", "16", "--no-progress",
        "--set", "data.limit_train=32", "--set", "data.limit_test=16", "--set", "optim.warmup_epochs=0",
        "--set", "train.tensorboard=false"]


def _main(argv: list[str]) -> int:
    """``main(argv)``, with a KeyboardInterrupt escaping it made a test failure (not an abort of the session)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): Ctrl-C would end in a traceback")


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th training step (1-based) raise KeyboardInterrupt, as Ctrl-C would."""
    real, calls = engine.train_step, []

    def step(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", step)


def test_ctrl_c_reports_where_and_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 4)  # epoch 2, its second step
    assert _main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spikformers train: interrupted in epoch 2 of 3, at step 2 of 2",
                   f"spikformers train: the last saved state is {out / 'state.safetensors'} (after epoch 1); "
                   "it is intact",
                   f"spikformers train: resume with: spikformers train --resume {out}"]
    assert load_train_state(out / "state.safetensors")[1]["epoch"] == 1
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []

    # before any weights were written: nothing to resume and no run folder left
    fresh = tmp_path / "fresh"
    _interrupt_at(monkeypatch, 1)
    assert _main(["train", *TINY, "--epochs", "3", "--out", str(fresh)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "spikformers train: interrupted in epoch 1 of 3, at step 1 of 2"
    assert "nothing to resume" in err[1] and not fresh.exists()

    # under torchrun only rank 0 speaks
    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    monkeypatch.setenv("RANK", "1")
    assert _main(["train", *TINY, "--out", str(fresh)]) == 130
    assert capsys.readouterr().err == ""


def test_sigint_to_a_training_process(tmp_path: Path) -> None:
    """A real SIGINT (Ctrl-C) after the first saved state: exit 130, the resume command, no traceback."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "spikformers", "train", *TINY, "--epochs", "200",
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "state.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "spikformers train: interrupted in epoch" in err
    assert f"resume with: spikformers train --resume {out}" in err
    assert load_train_state(out / "state.safetensors")[1]["epoch"] >= 1


def test_interruption_names_a_mid_epoch_state(tmp_path: Path) -> None:
    """A state written part-way through an epoch (train.save_every_steps) is reported by its step, not as the
    end of an epoch it did not finish."""
    import torch

    from spikformers.train.checkpoint import save_train_state
    from spikformers.train.run_folder import saved_position

    state = tmp_path / "state.safetensors"
    save_train_state(state, {"w": torch.zeros(1)}, {"epoch": 2, "step": 5, "steps_per_epoch": 12})
    assert saved_position(state) == "in epoch 3, after step 5 of 12"
    save_train_state(state, {"w": torch.zeros(1)}, {"epoch": 2})
    assert saved_position(state) == "after epoch 2"
    state.write_bytes(b"not a state")
    assert saved_position(state) is None
