"""Resume: a run killed with SIGKILL mid-training (after an epoch, or part-way through one) and resumed ends with
the same weights, EMA, optimiser state and metrics as an uninterrupted run; the training state holds no pickle;
a failed write leaves the previous state intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import state_meta
from spikformers.train.checkpoint import load_train_state, save_train_state

EPOCHS = 4
ARGS = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", str(EPOCHS),
        "--batch-size", "32", "--lr", "1e-2", "--seed", "3", "--no-progress",
        "--set", "optim.warmup_epochs=1", "--set", "data.limit_train=192", "--set", "data.limit_test=96",
        "--set", "deterministic=true", "--set", "train.tensorboard=false",
        "--set", "train.ema=true", "--set", "train.ema_decay=0.9"]  # EMA state must survive the restart too
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


MID_EPOCH = ["--set", "train.save_every=100", "--set", "train.save_every_steps=5"]  # 6 steps per epoch: saves at
# steps 5, 10, 15 and 20 all fall inside an epoch, and the only epoch-end state is the last epoch's


def _spikformers(*args: str) -> list[str]:
    return [sys.executable, "-m", "spikformers", "train", *args]


def _kill_when(jobs: list[tuple[subprocess.Popen, Path, int]]) -> list[dict]:
    """SIGKILL each run once its state has finished ``epoch`` epochs (all watched together); their states then."""
    pending, deadline = list(jobs), time.time() + 240
    while pending and time.time() < deadline:
        for job in list(pending):
            proc, run, epochs = job
            assert proc.poll() is None, "the run finished before it could be killed"
            if state_meta(run).get("epoch", 0) >= epochs:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                pending.remove(job)
        time.sleep(0.01)
    assert not pending, "no state was written in time"
    return [state_meta(run) for _, run, _ in jobs]


@dataclass
class Runs:
    ref: Path  # uninterrupted
    cut: Path  # killed after its second saved epoch, resumed
    killed_at: int
    mid: Path  # saving every 5 steps, killed after a save inside its second epoch or later, resumed
    mid_at_kill: dict  # the state's header at the kill
    mid_out: str  # what the resumed run printed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Three runs of the same seed side by side (when states are saved changes nothing), two killed and resumed."""
    base = tmp_path_factory.mktemp("resume")
    ref, cut, mid = base / "ref", base / "cut", base / "mid"
    quiet = dict(env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = subprocess.Popen(_spikformers(*ARGS, "--out", str(ref)), **quiet)  # type: ignore[call-overload]
    killed = [subprocess.Popen(_spikformers(*ARGS, *extra, "--out", str(run)), **quiet)  # type: ignore
              for run, extra in ((cut, []), (mid, MID_EPOCH))]
    at_cut, at_mid = _kill_when([(killed[0], cut, 2), (killed[1], mid, 1)])
    resumed = [subprocess.Popen(_spikformers("--resume", str(run), "--no-progress"), env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for run in (cut, mid)]
    outs = [proc.communicate(timeout=300) for proc in resumed]
    for proc, (_, err) in zip(resumed, outs):
        assert proc.returncode == 0, err
    assert reference.wait(timeout=300) == 0
    return Runs(ref, cut, at_cut.get("epoch", 0), mid, at_mid, outs[1][0])


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that are not bit-identical (the key sets must match)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _metric_columns(run: Path) -> list[list[str]]:
    """metrics.csv without its wall-time columns (images_per_s, seconds)."""
    rows = (run / "metrics.csv").read_text().splitlines()
    return [[v for i, v in enumerate(r.split(",")) if i not in (6, 7)] for r in rows]


def test_killed_and_resumed_run_equals_uninterrupted(runs: Runs) -> None:
    ref, cut = runs.ref, runs.cut
    assert runs.killed_at >= 1 and runs.killed_at < EPOCHS  # it really died mid-run
    for name in ("last.safetensors", "ema.safetensors"):
        different = _differing(load_file(str(ref / name)), load_file(str(cut / name)))
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert len(_metric_columns(cut)) == EPOCHS + 1
    assert _metric_columns(ref) == _metric_columns(cut)


def test_killed_mid_epoch_and_resumed_run_equals_uninterrupted(runs: Runs) -> None:
    ref, mid, at_kill = runs.ref, runs.mid, runs.mid_at_kill
    steps = at_kill["steps_per_epoch"]
    assert steps == 6 and 0 < at_kill["step"] < steps and 1 <= at_kill["epoch"] < EPOCHS  # died inside an epoch
    assert at_kill["global_step"] == at_kill["epoch"] * steps + at_kill["step"]
    assert f"resuming epoch {at_kill['epoch'] + 1} at step {at_kill['step']} of {steps}" in runs.mid_out
    for name in ("last.safetensors", "ema.safetensors"):
        different = _differing(load_file(str(ref / name)), load_file(str(mid / name)))
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    # the final states: model, AdamW moments and EMA, every tensor, and every RNG
    (a, meta_a), (b, meta_b) = load_train_state(ref / "state.safetensors"), load_train_state(mid / "state.safetensors")
    different = _differing(a, b)
    assert not different, f"state.safetensors: {len(different)} tensors differ, e.g. {different[:3]}"
    assert meta_a["epoch"] == meta_b["epoch"] == EPOCHS and meta_a["rng"] == meta_b["rng"]
    # every metrics.csv column but the wall-time ones: the interrupted epoch's train loss and accuracy too
    assert len(_metric_columns(mid)) == EPOCHS + 1
    assert _metric_columns(ref) == _metric_columns(mid)


def test_training_state_is_safetensors_plus_json(runs: Runs) -> None:
    cut = runs.cut
    tensors, meta = load_train_state(cut / "state.safetensors")
    assert meta["epoch"] == EPOCHS and len(meta["rng"]) == 1
    assert "step" not in meta  # epoch-end states keep the format of earlier versions, which resume as before
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


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_started_part_way_loads_the_same_batches(workers: int) -> None:
    """Regenerated from the epoch's starting generator state and skipping 3 batches, the loader yields the rest of
    the uninterrupted epoch, augmentation included (without workers from the global RNG as it was after batch 3,
    with workers from the base seed and each batch's position), and leaves the generator where it would be."""
    from spikformers.train.config import load_config
    from spikformers.train.engine import build_loaders

    opts = ["data.img_size=8", "data.limit_train=100", "data.batch_size=16", "seed=5", f"data.workers={workers}"]
    loader, _ = build_loaders(load_config(None, opts))
    start = loader.generator.get_state()
    torch.manual_seed(1)
    full, after_three = [], None
    for i, batch in enumerate(loader):
        full.append(batch)
        if i == 2:
            after_three = torch.get_rng_state()
    end = loader.generator.get_state()

    loader.generator.set_state(start)
    torch.set_rng_state(after_three)
    loader.sampler.skip_next_epoch(3 * 16)
    rest = list(loader)
    assert len(full) == 7 and len(rest) == 4
    for (x, y), (x2, y2) in zip(full[3:], rest):
        assert torch.equal(y, y2) and torch.equal(x, x2)
    assert torch.equal(loader.generator.get_state(), end)
    # the batches are augmented (random shifts): the same samples in the same order without augmentation differ
    plain, _ = build_loaders(load_config(None, [*opts, "data.kwargs.augment=false"]))
    plain.generator.set_state(start)
    unaugmented = list(plain)
    assert all(torch.equal(y, y2) for (_, y), (_, y2) in zip(full, unaugmented))
    assert not any(torch.equal(x, x2) for (x, _), (x2, _) in zip(full, unaugmented))


def test_save_every_steps_is_range_checked() -> None:
    from spikformers.train.config import ConfigError, load_config

    assert load_config(None, ["train.save_every_steps=0"]).train.save_every_steps == 0
    with pytest.raises(ConfigError, match="'train.save_every_steps': must be 0 \\(off\\) or more"):
        load_config(None, ["train.save_every_steps=-1"])


def test_mid_epoch_state_on_another_layout_continues_after_the_same_fraction(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A state saved at step 4 of 6 by 2 processes, resumed by 1 process with 12 steps per epoch, continues at step
    8 with both processes' running sums on rank 0, and says the order differs."""
    from spikformers.train.distributed import DistInfo
    from spikformers.train.engine import _load_resume, _save_resume, rng_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    position = {"step": 4, "steps_per_epoch": 6, "global_step": 16, "batch_size": 16,
                "train": [[64, 30, 90.5, 2.0], [64, 34, 80.25, 2.5]]}
    path = tmp_path / "state.safetensors"
    _save_resume(path, model, opt, scaler, None, 2, 55.0, 9.0, [rng_state(None)] * 2, position=position)

    same = _load_resume(path, model, opt, scaler, None, None, DistInfo(1, 2), 6, 16)
    assert (same.epoch, same.step, same.global_step, same.train) == (2, 4, 16, (64, 34, 80.25, 2.5))
    other = _load_resume(path, model, opt, scaler, None, None, DistInfo(0, 1), 12, 16)
    assert (other.epoch, other.step, other.global_step) == (2, 8, 32)
    assert other.train == (128, 64, 170.75, 2.5) and other.best_acc == 55.0
    assert "continues at step 8, in a different data order" in capsys.readouterr().out


def test_states_are_written_after_the_rows_they_cover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every state is written when metrics.csv already holds the rows of the epochs it counts as finished, so a
    kill between the two writes cannot lose a row (resume keeps the rows the state covers and re-trains the
    rest); with save_every_steps=4 and 6 steps per epoch, a state every 4 steps except at an epoch's end."""
    from spikformers.train import engine
    from spikformers.train.config import load_config

    written = []
    save = engine._save_resume

    def noting(path: Path, *args, position: dict | None = None) -> None:  # type: ignore[no-untyped-def]
        rows = len((path.parent / "metrics.csv").read_text().splitlines()) - 1
        written.append((args[4], (position or {}).get("step", 0), rows))  # epochs finished, step, rows
        save(path, *args, position=position)

    monkeypatch.setattr(engine, "_save_resume", noting)
    cfg = load_config(None, ["model.name=spikformer_1_64_cifar", "model.T=1", "data.img_size=8", "optim.epochs=2",
                             "data.batch_size=32", "data.limit_train=192", "data.limit_test=32", "progress=false",
                             "train.tensorboard=false", "train.keep_freed_memory=false", "train.save_every_steps=4",
                             f"out={tmp_path / 'run'}"])
    engine.train(cfg)
    assert written == [(0, 4, 0), (1, 0, 1), (1, 2, 1), (2, 0, 2)]
