"""The run folder of ``spikformers train``: never written over, created only once a run can start, and taken
back when a start fails before it wrote any weights.

* A folder that already holds a run (``config.yaml``, ``model.json``, ``metrics.csv``, ``summary.json``, ``tb/``,
  any ``*.safetensors``) is refused unless the run continues it (``--resume``) or ``overwrite`` is asked, which
  moves the old run aside to ``DIR.old-<YYYYmmdd-HHMMSS>`` (never deletes it).
* If the start then fails or is interrupted before the first weights are written, what it created is removed
  and a run moved aside is put back, so a failed start changes nothing on disk.
* :class:`RunProgress` records where a run stands (epoch, step), so an interruption can say where it stopped
  and how to resume.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError, read_train_state_meta

RUN_FILES = ("config.yaml", "model.json", "metrics.csv", "summary.json", "tb")
STATE_FILE = "state.safetensors"


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (it holds a run, or is a file)."""


def run_files(folder: Path) -> list[str]:
    """The names in ``folder`` that belong to a training run (empty if there is none, or no folder)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in RUN_FILES or p.suffix == ".safetensors")


def aside_name(folder: Path, stamp: str | None = None) -> Path:
    """A free name ``DIR.old-<YYYYmmdd-HHMMSS>`` beside ``folder`` (``-1``, ``-2``... added on a clash)."""
    if Path(folder).name in ("", ".", ".."):  # "." has no name to extend
        folder = Path(os.path.abspath(folder))
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    target, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while target.exists():
        target, n = folder.with_name(f"{folder.name}.old-{stamp}-{n}"), n + 1
    return target


def default_run_dir(root: Path = Path("runs")) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>``, with ``-1``, ``-2``... added if a run of the same second is there."""
    base = root / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while run_files(path):
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@dataclass
class RunFolder:
    """Where a run writes: ``path``, whether it continues the run there (``resume``) or may move an old run
    aside (``overwrite``). :meth:`check` refuses before anything is built; :meth:`create` makes the folder once
    everything is built; :meth:`undo` takes back what :meth:`create` did if no weights were written since."""

    path: Path
    resume: bool = False
    overwrite: bool = False
    moved_to: Path | None = None  # where an old run was moved by --overwrite
    restored: bool = False  # the moved run was put back by undo()
    _created: list[Path] = field(default_factory=list)  # folders this start made, deepest first
    _before: set[str] | None = None  # what the folder held before this start (None: not created yet)

    def check(self) -> None:
        """Raise :class:`RunFolderError` if starting here would write over a run; changes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} is a file, not a folder; pass another --out")
        if self.resume:
            return
        found = run_files(self.path)
        if found and not self.overwrite:
            shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
            raise RunFolderError(
                f"run folder {self.path} already holds a run ({shown}); nothing was changed\n"
                f"  to continue that run:  spikformers train --resume {self.path}\n"
                f"  to start afresh there: add --overwrite (the old run is moved to "
                f"{self.path}.old-<YYYYmmdd-HHMMSS>, not deleted)")

    def create(self) -> None:
        """Make the folder (and its missing parents); with ``overwrite``, first move an old run aside."""
        self.check()
        if not self.resume and self.overwrite and run_files(self.path):
            self.moved_to = aside_name(self.path)
            os.rename(self.path, self.moved_to)
        missing, p = [], Path(os.path.abspath(self.path))
        while not p.exists():
            missing.append(p)
            p = p.parent
        self._before = set() if missing else {q.name for q in self.path.iterdir()}
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = missing

    @property
    def created(self) -> bool:
        """Whether :meth:`create` ran (and :meth:`undo` has not taken it back)."""
        return self._before is not None

    def wrote_weights(self) -> bool:
        """Whether this start wrote any ``*.safetensors`` (weights or state) into the folder."""
        return self._before is not None and self.path.is_dir() and any(
            p.suffix == ".safetensors" and p.name not in self._before for p in self.path.iterdir())

    def undo(self) -> bool:
        """If this start created or filled the folder but wrote no weights, remove what it wrote (only that) and
        put a run moved aside back; returns whether it did. A resumed run's folder is never touched."""
        if self.resume or self._before is None or self.wrote_weights():
            return False
        if self.path.is_dir():
            for p in self.path.iterdir():
                if p.name in self._before:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        for folder in self._created:  # deepest first; only if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        if self.moved_to is not None and not self.path.exists():
            os.rename(self.moved_to, self.path)
            self.restored = True
        self._before = None
        return True


@dataclass
class RunProgress:
    """Where a run stands, filled in by the training loop: its folder, the epoch (1-based) and the step within
    it being run. ``removed``: the start failed early and its folder was taken back."""

    folder: RunFolder | None = None
    epoch: int = 0
    step: int = 0
    total_epochs: int = 0
    steps_per_epoch: int = 0
    removed: bool = False


def saved_position(state: Path) -> str | None:
    """Where a resume state file was written ("after epoch 3", "in epoch 4, after step 20 of 50"), read from its
    header only; None if there is no usable state."""
    try:
        meta = read_train_state_meta(state)
        epoch, step = int(meta["epoch"]), int(meta.get("step") or 0)
    except (CheckpointError, KeyError, TypeError, ValueError):  # none, a partial one, another format: no usable state
        return None
    if step:  # a mid-epoch state (train.save_every_steps): epoch counts the finished ones
        return f"in epoch {epoch + 1}, after step {step} of {meta.get('steps_per_epoch', '?')}"
    return f"after epoch {epoch}"


def interruption_report(progress: RunProgress, distributed: bool = False) -> list[str]:
    """What to tell the user after Ctrl-C: where the run stopped, what was kept, and how to resume."""
    run = progress.folder
    if progress.epoch == 0:
        where = "before the first training step"
    else:
        where = (f"in epoch {progress.epoch} of {progress.total_epochs}, at step {progress.step + 1} of "
                 f"{progress.steps_per_epoch}")
    lines = [f"interrupted {where}"]
    if run is None or not (run.resume or run.created or progress.removed):
        return lines + ["no run folder was created yet; nothing was written"]
    if progress.removed:
        back = f"; the run that was there is back in {run.path}" if run.restored else ""
        return lines + [f"no weights were written yet, so there is nothing to resume: what this start wrote in "
                        f"{run.path} was removed{back}"]
    state = run.path / STATE_FILE
    position = saved_position(state)
    if position is None:
        last = run.path / "last.safetensors"
        kept = f" ({last} holds the last finished epoch's weights)" if last.exists() else ""
        return lines + [f"no resume state was written yet (see train.save_every): {run.path} is kept{kept} but "
                        "cannot be resumed"]
    launcher = "the same torchrun command with" if distributed else "spikformers train"
    return lines + [f"the last saved state is {state} ({position}); it is intact",
                    f"resume with: {launcher} --resume {run.path}"]
