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
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, flush it to disk, then rename it onto ``path``
    in one step: an interruption (Ctrl-C, a kill, a crash) leaves the previous file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the data must be on disk before the name points at it
            os.fsync(f.fileno())
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


# ---------------------------------------------------------------------------------------------------------
# Resume state: one safetensors file holding every tensor (model, EMA, optimiser moments) with the rest
# (epoch, optimiser hyper-parameters, scaler, RNG states, best accuracy) as JSON in its metadata header.
# One file, written atomically: a kill at any moment leaves either the previous state or the new one.

STATE_FORMAT = "spikformers-train-state-v1"


def save_train_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors plus JSON-able ``meta`` to one safetensors file, atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    header = {"format": STATE_FORMAT, "state": json.dumps(meta)}
    atomic_write(Path(path), lambda tmp: save_file(flat, str(tmp), metadata=header))


def load_train_state(path: str | Path, tensors_too: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_train_state` wrote: ``(tensors, meta)`` (``tensors_too=False``: the header only, no
    tensors). Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state {path}: the run wrote none yet (it saves at the end of an epoch, "
                              "and every train.save_every_steps steps if set)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if tensors_too else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable training state: {e}") from None
    if header.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a spikformers training state (format {header.get('format')!r})")
    return tensors, json.loads(header["state"])


def read_train_state_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` of a training state (epoch, step, ...) from its header alone, checked as
    :func:`load_train_state` checks it, without reading its tensors."""
    return load_train_state(path, tensors_too=False)[1]


def split_state_dict(prefix: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten a nested state dict into ``prefix.a.b`` tensors and a JSON-able tree of everything else."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return {"__tuple__" if isinstance(node, tuple) else "__list__": [walk(v, f"{key}.{i}")
                                                                          for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise CheckpointError(f"cannot store {type(node).__name__} at {key} in a training state")

    return tensors, walk(state, prefix)


def join_state_dict(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state_dict` (dict keys that were ints come back as ints)."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {k: join_state_dict(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(join_state_dict(v, tensors) for v in tree["__tuple__"])
        if "__list__" in tree:
            return [join_state_dict(v, tensors) for v in tree["__list__"]]
    return tree
