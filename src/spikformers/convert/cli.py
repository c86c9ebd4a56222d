"""``spikformers convert``: a checkpoint trained elsewhere -> a spikformers run folder (and / or a Hub folder).

    spikformers convert model_best.pth.tar --model spikformer_4_384_cifar --out runs/official_cifar10
    spikformers eval --checkpoint runs/official_cifar10 --dataset cifar10 --data-dir data/

The run folder holds ``model.json``, ``last.safetensors``, ``config.yaml`` (the model, and the data its ``eval``,
``energy`` and ``plot`` use: ``--set data.name=...``; the image size defaults to the model's) and
``conversion.json`` (source, settings with their origin, the key map and the ignored keys).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli import command
from ..train.checkpoint import CheckpointError
from .layouts import SOURCES


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="file (.pth, .pth.tar, .pt, .safetensors) or run / Hub folder")
    p.add_argument("--model", help="registry name to build (checked against the weights; needed where the "
                                   "checkpoint does not tell it, e.g. spikingjelly's Spikformer stem pooling)")
    p.add_argument("--source", default="auto", choices=["auto", *SOURCES],
                   help="layout of the checkpoint (default: recognised from its keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model.kwargs.KEY=VALUE: a builder override (T, heads, img_size, ...); data.KEY=VALUE: the "
                        "run's data for eval / energy / plot (repeatable)")
    p.add_argument("--ema", action="store_true", help="take the averaged weights (state_dict_ema / model_ema)")
    p.add_argument("--which", default="last", choices=["last", "best"], help="weights of a run folder checkpoint")
    p.add_argument("--out", metavar="RUN_DIR", help="write a run folder (a new or empty folder)")
    p.add_argument("--hub-out", metavar="DIR", help="write a Hugging Face Hub folder (config.json + model.safetensors)")


def parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items -> (builder overrides, data settings); ``model.T`` / ``model.attn`` count as overrides."""
    from ..train.config import ConfigError, set_key

    tree: dict[str, Any] = {}
    for item in items:
        set_key(tree, item)
    model, data = tree.pop("model", {}), tree.pop("data", {})
    if tree:
        raise ConfigError(f"--set {', '.join(sorted(tree))}.*: convert takes model.kwargs.KEY=VALUE and data.KEY=VALUE")
    overrides = dict(model.pop("kwargs", {}) or {})
    for key in ("T", "attn"):
        if key in model:
            overrides[key] = model.pop(key)
    if model:
        raise ConfigError(f"--set model.{', model.'.join(sorted(model))}: use --model NAME for the name, "
                          "model.kwargs.KEY=VALUE for builder overrides")
    return overrides, data


def _new_folder(path: Path, flag: str) -> Path:
    """``path``, refused when it exists and is not an empty folder (nothing of an earlier run is overwritten)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{flag} {path}: exists and is not empty; choose a new folder (nothing was written)")
    return path


def write_run_folder(imported: Any, out: Path, data: dict[str, Any]) -> None:
    """model.json, last.safetensors, config.yaml and conversion.json of a converted model."""
    from ..train.checkpoint import save_model_config, save_weights
    from ..train.config import config_from_dict, dump_config

    model = imported.model
    overrides = json.loads(json.dumps(model.default_cfg["overrides"]))  # tuples as lists, as JSON and YAML keep them
    data = {"img_size": model.default_cfg["config"].get("img_size"), **data}
    cfg = config_from_dict({"model": {"name": imported.name, "kwargs": overrides}, "data": data, "out": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    save_model_config(model, out)
    save_weights(model, out / "last.safetensors", metadata={"source": imported.source})
    dump_config(cfg, out / "config.yaml")
    record = {
        "checkpoint": imported.notes, "source": imported.source, "code": imported.code, "model": imported.name,
        "settings": {k: {"value": v, "from": why} for k, (v, why) in imported.settings.items()},
        "keys": [{"source": k.source, "target": k.target, **({"part": list(k.part)} if k.part[1] > 1 else {}),
                  **({"squeeze": True} if k.squeeze else {})} for k in imported.keys],
        "ignored": imported.ignored,
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=1, default=str))


@command("convert", "turn a checkpoint trained elsewhere (spikingjelly, official Spikformer / QKFormer / SDT code) "
                    "into a run folder", _convert_args)
def _convert(args: argparse.Namespace) -> int:
    from .hub import save_hub_folder
    from .importer import import_checkpoint

    overrides, data = parse_sets(args.set)
    out = _new_folder(Path(args.out), "--out") if args.out else None
    hub = _new_folder(Path(args.hub_out), "--hub-out") if args.hub_out else None
    if data:  # checked before anything is read
        from ..train.config import config_from_dict

        config_from_dict({"data": data})
    imported = import_checkpoint(args.checkpoint, args.model, args.source, ema=args.ema, which=args.which,
                                 **overrides)
    for line in imported.notes + imported.report():
        print(line)
    if out is not None:
        write_run_folder(imported, out, data)
        print(f"run folder {out}: model.json, last.safetensors, config.yaml, conversion.json")
    if hub is not None:
        save_hub_folder(imported.model, hub)
        print(f"Hub folder {hub}: config.json, model.safetensors")
    if out is None and hub is None:
        print("checked only: give --out RUN_DIR and / or --hub-out DIR to write the model")
    how = f"{len(imported.keys)} tensors mapped, {len(imported.ignored)} ignored" if imported.keys else "own format"
    print(f"converted {imported.source} checkpoint -> {imported.name} ({how})")
    return 0
