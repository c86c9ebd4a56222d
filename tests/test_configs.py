"""Every recipe in configs/: loads, marks each value official or ours, builds its real model (parameter count on the
meta device) and runs one real training step of a shrunken copy on synthetic data of the right shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from spikformers.train.config import load_config
from spikformers.train.engine import (
    build_criterion,
    build_mixup,
    build_model,
    build_optimizer,
    train_step,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
REQUIRED = {  # one recipe per published model x dataset (docs/recipes.md), plus the A2OS2A and EST presets
    "spikformer_4_384_cifar10", "spikformer_4_384_cifar100", "spikformer_8_384_imagenet", "spikformer_8_512_imagenet",
    "spikformer_8_768_imagenet", "spikformer_2_256_cifar10dvs", "spikformer_2_256_dvsgesture",
    "spiliformer_4_384_cifar10", "spiliformer_4_384_cifar100", "spiliformer_10_768_imagenet",
    "spiliformer_2_256_cifar10dvs", "spiliformer_2_256_ncaltech101", "a2os2a_8_768_imagenet", "a2os2a_4_384_cifar10",
    "est_8_768_imagenet", "est_4_384_cifar10",
}
# shrink the model for the CPU step: depth, width (a multiple of every variant's head count) and image size
SMALL = {"imagenet": (1, 96, 32), "cifar": (1, 96, 32), "dvs": (1, 64, 32)}


def _leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_every_published_recipe_exists() -> None:
    assert REQUIRED <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_marks_every_value(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    meta = doc.pop("_meta")
    official, ours = set(meta["official"]), set(meta["ours"])
    assert not official & ours, f"{path.name}: marked both official and ours: {official & ours}"
    leaves = _leaves(doc) - {"model.name", "data.name"}
    assert leaves == official | ours, (f"{path.name}: unmarked {sorted(leaves - official - ours)}, "
                                       f"marked but absent {sorted((official | ours) - leaves)}")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_builds_real_model_and_trains_one_step(path: Path) -> None:
    meta = yaml.safe_load(path.read_text())["_meta"]
    cfg = load_config(path)
    with torch.device("meta"):  # the full-size model, without allocating 66 M parameters
        full = build_model(cfg)
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == meta["params"]
    variant = full.default_cfg["config"]
    num_classes, in_chans, T = variant["num_classes"], variant["in_chans"], variant["T"]
    assert T == cfg.model.T

    kind = "dvs" if in_chans == 2 else ("cifar" if variant["img_size"] == 32 else "imagenet")
    depth, dim, size = SMALL[kind]
    small = load_config(path, ["model.T=1", "train.amp=none", "data.batch_size=2", f"data.img_size={size}",
                               "model.kwargs=" + json.dumps({**cfg.model.kwargs, "depth": depth, "dim": dim})])
    torch.manual_seed(0)
    model = build_model(small)
    assert model.default_cfg["config"]["num_classes"] == num_classes
    opt = build_optimizer(model, small)
    mixup = build_mixup(small, num_classes)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(2, in_chans, size, size) if in_chans == 3 else torch.rand(1, 2, 2, size, size).round()
    y = torch.tensor([0, num_classes - 1])
    model.train()
    if hasattr(model, "beta") and small.train.beta is not None:
        model.beta = small.train.beta
    before = [p.detach().clone() for p in model.parameters()]
    _, loss = train_step(model, model, x, y, opt, scaler, build_criterion(small, mixup is not None), small, mixup)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
