"""Models in the Hugging Face Hub folder layout that timm reads: ``config.json`` + ``model.safetensors``.

    >>> spikformers.save_hub_folder(model, "hub/spikformer-cifar10")        # then upload the folder to ORG/NAME
    >>> timm.create_model("hf-hub:ORG/NAME", pretrained=True)                 # any published spikformers name
    >>> timm.create_model("local-dir:hub/spikformer-cifar10", pretrained=True)
    >>> spikformers.create_model("spikformer_4_384_cifar", checkpoint_path="hub/spikformer-cifar10")

``config.json`` holds what timm's Hub loader expects: ``architecture`` (the registry name), ``num_classes``,
``num_features``, ``model_args`` (the builder overrides, so the same network is rebuilt) and ``pretrained_cfg``
(input size, first conv and classifier names, and what the caller adds: ``mean``, ``std``, ``license``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..train.checkpoint import CheckpointError, atomic_write, load_weights, save_weights

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def hub_config(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a spikformers model (built by :func:`spikformers.create_model`)."""
    cfg = getattr(model, "default_cfg", None)
    if not cfg or "architecture" not in cfg:
        raise CheckpointError("model has no default_cfg; build it with spikformers.create_model to save it")
    full = cfg["config"]
    model_args = json.loads(json.dumps(cfg.get("overrides", {})))  # tuples as lists, as JSON keeps them
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    return {
        "architecture": cfg["architecture"],
        "num_classes": full["num_classes"],
        "num_features": full["dim"],
        "model_args": model_args,
        "pretrained_cfg": {
            "architecture": cfg["architecture"],
            "input_size": [full["in_chans"], full["img_size"], full["img_size"]],
            "fixed_input_size": True,
            "num_classes": full["num_classes"],
            "first_conv": first_conv,
            "classifier": "head",
            **(pretrained_cfg or {}),
        },
    }


def save_hub_folder(model: nn.Module, folder: str | Path, pretrained_cfg: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to a new (or empty) folder; returns the folder.

    ``pretrained_cfg``: fields of timm's pretrained config to record beside the input size, e.g.
    ``{"mean": [...], "std": [...], "license": "apache-2.0"}`` (timm's data config reads ``mean`` / ``std``).
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CheckpointError(f"{folder} exists and is not an empty folder; choose a new one")
    doc = hub_config(model, pretrained_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS, metadata={"format": "pt"})
    text = json.dumps(doc, indent=2)
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return folder


def read_hub_config(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """``(architecture, model_args)`` of a Hub folder's ``config.json`` (``num_classes`` included)."""
    path = Path(folder) / CONFIG
    try:
        doc = json.loads(path.read_text())
        arch, model_args = doc["architecture"], dict(doc.get("model_args") or {})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: expected JSON with 'architecture' and 'model_args' ({e})") from None
    if "num_classes" in doc:
        model_args.setdefault("num_classes", doc["num_classes"])
    return arch, model_args


def load_hub_folder(folder: str | Path, **overrides: Any) -> nn.Module:
    """The model of a Hub folder: built from ``config.json`` (``overrides`` on top), weights checked and loaded."""
    from ..registry import create_model

    arch, model_args = read_hub_config(folder)
    model = create_model(arch, **{**model_args, **overrides})
    load_weights(model, Path(folder) / WEIGHTS)
    return model
