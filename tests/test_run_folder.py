"""No run is ever lost: `train --out` onto a run is refused before anything is built, `--overwrite` moves the old
run aside intact, and a start that fails before writing weights leaves no half-made run folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikformers.cli import main
from spikformers.train import engine
from spikformers.train.run_folder import RunFolder, aside_name, run_files

TINY = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", "1", "--batch-size", "16",
        "--no-progress", "--set", "data.limit_train=16", "--set", "data.limit_test=16",
        "--set", "optim.warmup_epochs=0", "--set", "train.tensorboard=false"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_run_folder_is_refused_then_moved_aside_intact_with_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs" / "demo"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    first = _snapshot(out)
    assert {"config.yaml", "last.safetensors", "state.safetensors", "metrics.csv"} <= set(first)
    capsys.readouterr()

    def no_build(cfg):  # type: ignore[no-untyped-def]
        raise AssertionError("the refusal must come before anything is built")

    with monkeypatch.context() as m:
        m.setattr(engine, "build_model", no_build)
        assert main(["train", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run folder {out} already holds a run" in err
    assert f"spikformers train --resume {out}" in err and "--overwrite" in err
    assert _snapshot(out) == first and sorted(p.name for p in out.parent.iterdir()) == ["demo"]

    assert main(["train", *TINY, "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    moved = [p for p in out.parent.iterdir() if p.name.startswith("demo.old-")]
    assert len(moved) == 1 and _snapshot(moved[0]) == first  # the old run, byte for byte
    assert (out / "state.safetensors").is_file() and _snapshot(out) != first
    assert f"is now in {moved[0]}" in capsys.readouterr().out

    # a clash of the moved-aside name gets a suffix; an empty folder is fine to train into
    stamp = moved[0].name.split(".old-")[1]
    assert aside_name(out, stamp) == out.parent / f"demo.old-{stamp}-1"
    empty = tmp_path / "empty"
    empty.mkdir()
    RunFolder(empty).check()
    (empty / "notes.txt").write_text("mine")
    RunFolder(empty).check()  # files of no run are not a run
    assert run_files(empty) == []


def test_failed_start_leaves_no_half_made_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise engine.TrainingError("loss is nan at epoch 1, step 0; stopping")

    monkeypatch.setattr(engine, "train_step", fail)
    fresh = tmp_path / "runs" / "fresh"
    assert main(["train", *TINY, "--out", str(fresh)]) == 2
    assert "loss is nan" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # neither the folder nor the parent it made

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    assert main(["train", *TINY, "--out", str(empty)]) == 2
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]  # only what the start wrote is removed

    monkeypatch.undo()
    old = tmp_path / "old"
    assert main(["train", *TINY, "--out", str(old)]) == 0
    before = _snapshot(old)
    monkeypatch.setattr(engine, "train_step", fail)
    assert main(["train", *TINY, "--out", str(old), "--overwrite"]) == 2
    assert _snapshot(old) == before and [p.name for p in tmp_path.iterdir() if ".old-" in p.name] == []

    # refused before building: a bad model argument, a missing dataset
    for args in (["--T", "0"], ["--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")]):
        out = tmp_path / "never"
        assert main(["train", *TINY, *args, "--out", str(out)]) == 2
        assert not out.exists()
