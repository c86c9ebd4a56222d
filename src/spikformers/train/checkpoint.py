"""Checkpoints: weights as safetensors, the model's configuration as JSON. Nothing is ever unpickled.

A run folder holds ``model.json`` (registry name and overrides), ``best.safetensors`` and ``last.safetensors``.
Files are written atomically (to a temporary name, then renamed), so a kill mid-write never leaves a broken one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or belongs to another architecture."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and then rename the result onto ``path`` in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save a model's state dict (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))


def save_model_config(model: nn.Module, run_dir: str | Path) -> None:
    """Write ``model.json``: what :func:`load_model` needs to rebuild the same architecture."""
    cfg = getattr(model, "default_cfg", None)
    if not cfg or "architecture" not in cfg:
        raise CheckpointError("model has no default_cfg; build it with spikformers.create_model to checkpoint it")
    doc = {"architecture": cfg["architecture"], "overrides": cfg.get("overrides", {})}
    text = json.dumps(doc, indent=2, default=_not_serialisable)
    atomic_write(Path(run_dir) / "model.json", lambda tmp: Path(tmp).write_text(text))


def _not_serialisable(obj: Any) -> Any:
    raise CheckpointError(f"model override {obj!r} cannot be saved as JSON; pass names (strings), not objects")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not fit {getattr(model, 'default_cfg', {}).get('architecture', type(model).__name__)}:"]

    def show(title: str, keys: list[str], fmt: Any = str) -> None:
        if keys:
            more = f" ... and {len(keys) - 8} more" if len(keys) > 8 else ""
            lines.append(f"  {title} ({len(keys)}): " + ", ".join(fmt(k) for k in keys[:8]) + more)

    show("missing keys", missing)
    show("unexpected keys", unexpected)
    show("shape mismatches", shapes,
         lambda k: f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    raise CheckpointError("\n".join(lines))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` after checking every key and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path]:
    """``(run_dir, weights_file)`` for a run folder (picking ``which``) or a ``.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        weights = p / f"{which}.safetensors"
        if not weights.exists() and (p / "last.safetensors").exists():
            weights = p / "last.safetensors"
        return p, weights
    if p.suffix == ".safetensors":
        return p.parent, p
    raise CheckpointError(f"{p}: expected a run folder or a .safetensors file")


def load_model(path: str | Path, which: str = "best", **overrides: Any) -> nn.Module:
    """Rebuild a model from a run folder (``model.json``) and load its weights (``best`` or ``last``)."""
    from ..registry import create_model

    run_dir, weights = resolve_checkpoint(path, which)
    cfg_path = run_dir / "model.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: no model.json beside the weights; cannot tell which model to build")
    try:
        doc = json.loads(cfg_path.read_text())
        arch, saved = doc["architecture"], dict(doc.get("overrides", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: expected JSON with 'architecture' and 'overrides' ({e})") from None
    model = create_model(arch, **{**saved, **overrides})
    load_weights(model, weights)
    return model
