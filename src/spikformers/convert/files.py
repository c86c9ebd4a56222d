"""Reading checkpoint files as people hold them, without ever running code from them.

``.safetensors`` files hold tensors only. ``torch.save`` files (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``) are
pickles, and a pickle can name any function to call while it loads; they are read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only, plus the one class the
training scripts of the official repositories store beside the weights, ``argparse.Namespace`` (their ``args``).
A file naming anything else is refused before it is unpickled, with the names it holds.

The state dict is then found inside the container the training script wrote (``state_dict``, ``model``,
``state_dict_ema``, ...), and a ``module.`` prefix left by DistributedDataParallel (or ``_orig_mod.`` by
``torch.compile``) is removed.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..train.checkpoint import CheckpointError

# the only classes a checkpoint may name besides tensors and plain containers: "module.qualname"
ALLOWED_GLOBALS = {"argparse.Namespace": argparse.Namespace}
# where training scripts put the weights: timm's CheckpointSaver, the MAE-style scripts of QKFormer, the DVS ones
WEIGHTS_KEYS = ("state_dict", "model", "net", "model_state_dict")
EMA_KEYS = ("state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class CheckpointFile:
    """What was read: ``state`` (name -> tensor, prefixes removed), the training script's ``args`` (a dict, from
    an ``argparse.Namespace``, or None), and ``notes``: how the state dict was found, for the report."""

    path: Path
    state: dict[str, torch.Tensor]
    args: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path, ema: bool = False) -> CheckpointFile:
    """Read a ``.safetensors`` or ``torch.save`` file and find its state dict (see the module docstring).

    ``ema``: take the exponential-moving-average weights (``state_dict_ema`` / ``model_ema``) where the file
    holds both. Raises :class:`~spikformers.train.checkpoint.CheckpointError` naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
        notes = ["safetensors file"]
    else:
        obj, notes = _torch_load(path), ["torch.save file, read with weights_only=True"]
    state, args, found = unwrap(obj, str(path), ema)
    return CheckpointFile(path, state, args, notes + found)


def _torch_load(path: Path) -> Any:
    """``torch.load`` with only tensors, plain containers and :data:`ALLOWED_GLOBALS`; nothing else is called."""
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError):  # not a zip checkpoint: the legacy format
        named = None
    if named is not None:
        _refuse(path, [g for g in named if g not in ALLOWED_GLOBALS])
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a legacy file naming a class: torch stopped before calling it
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if found:
            _refuse(path, found)
        raise CheckpointError(f"{path} is not a readable torch.save checkpoint: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch.save checkpoint: {e}") from None


def _refuse(path: Path, names: list[str]) -> None:
    if names:
        raise CheckpointError(
            f"{path}: refused, the file names {', '.join(sorted(set(names)))}, which loading would call (code "
            f"from the file, not weights). Only tensors, plain containers and {', '.join(ALLOWED_GLOBALS)} are "
            "read; save the weights alone (torch.save(model.state_dict()) or safetensors) where you trust the code"
        )


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def unwrap(obj: Any, where: str, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None,
                                                             list[str]]:
    """The state dict inside a loaded checkpoint, the training ``args`` as a dict (or None) and notes on how
    they were found. A flat name -> tensor dict is the state dict itself."""
    notes: list[str] = []
    args = None
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        args = dict(vars(obj["args"]))
    if ema and not (isinstance(obj, dict) and any(_is_state_dict(obj.get(k)) for k in EMA_KEYS)):
        keys = "a flat state dict" if _is_state_dict(obj) else f"its keys are {sorted(map(str, obj))}" \
            if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{where}: no averaged weights ({', '.join(EMA_KEYS)}) in it: {keys}")
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict):
        present = [k for k in WEIGHTS_KEYS if _is_state_dict(obj.get(k))]
        averaged = [k for k in EMA_KEYS if _is_state_dict(obj.get(k))]
        chosen = (averaged if ema else present or averaged)[:1]
        if not chosen:
            raise CheckpointError(
                f"{where}: found no state dict; expected a mapping of names to tensors, or one under "
                f"{', '.join(WEIGHTS_KEYS + EMA_KEYS)}; its keys are {sorted(map(str, obj))}"
            )
        state = obj[chosen[0]]
        others = [k for k in present + averaged if k != chosen[0]]
        notes.append(f"weights under [{chosen[0]!r}]" + (f" (also holds {', '.join(others)})" if others else ""))
    else:
        raise CheckpointError(f"{where}: expected a state dict (a mapping of names to tensors), "
                              f"found a {type(obj).__name__}")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            notes.append(f"{prefix!r} prefix removed")
    return dict(state), args, notes
