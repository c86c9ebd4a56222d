"""``spikformers.create_model``: build a model by name, optionally with the weights of any checkpoint it reads.

The registry (one floor down) only builds; loading a checkpoint needs the readers of :mod:`spikformers.convert`,
which build through the registry themselves, so the two meet here, above both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from . import registry


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a model by name, e.g. ``create_model("spikformer_4_384_cifar", num_classes=100, T=2)``.

    Overrides are any builder argument (see :func:`spikformers.registry.create_model`). ``checkpoint_path``: load
    weights from a checkpoint in any format spikformers reads (a run or Hub folder, a spikingjelly or official
    Spikformer / QKFormer / SDT checkpoint; :func:`spikformers.convert.import_checkpoint`), as
    ``timm.create_model(..., checkpoint_path=)`` does.
    """
    if checkpoint_path is not None:
        from .convert.importer import load_checkpoint

        return load_checkpoint(checkpoint_path, name, **overrides)
    return registry.create_model(name, pretrained=pretrained, **overrides)


def _timm_pretrained(name: str, pretrained_cfg: Any = None, overlay: dict[str, Any] | None = None,
                     **overrides: Any) -> nn.Module:
    """``timm.create_model(..., pretrained=True)`` for a spikformers name: the weights timm's pretrained config
    points to, a Hub repository (``hf-hub:``, fetched by timm's own downloader), a local Hub folder
    (``local-dir:``) or a ``file`` (any format :func:`~spikformers.convert.import_checkpoint` reads)."""
    from .convert.hub import WEIGHTS
    from .convert.importer import load_checkpoint
    from .train.checkpoint import load_weights

    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg or {})
    cfg.update(overlay or {})
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        from timm.models._hub import download_from_hf

        weights = Path(download_from_hf(cfg["hf_hub_id"], cfg.get("hf_hub_filename") or WEIGHTS))
    elif cfg.get("source") == "local-dir" and cfg.get("file"):
        weights = Path(cfg["file"]) / WEIGHTS
    elif cfg.get("file"):
        return load_checkpoint(cfg["file"], name, **overrides)
    else:
        raise ValueError(f"{name}: spikformers ships no pretrained weights; give timm a Hub repository "
                         "('hf-hub:ORG/NAME'), a folder ('local-dir:PATH') or pretrained_cfg_overlay=dict(file=PATH)")
    model = registry.create_model(name, **overrides)
    load_weights(model, weights)
    return model


registry.set_pretrained_loader(_timm_pretrained)
