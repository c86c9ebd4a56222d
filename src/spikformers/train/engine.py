"""The training loop: build everything from a :class:`TrainConfig`, train, evaluate, checkpoint.

It knows nothing about particular models: outputs go through :func:`spikformers.outputs.output_loss`, so a
multi-pass model (SpiLiFormer) trains with its weighted loss and is scored on its final logits.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import create_dataset, dataset_info
from ..outputs import logits_of, output_loss
from ..registry import count_parameters, create_model
from .checkpoint import save_model_config, save_weights
from .config import TrainConfig, dump_config


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or Inf loss); the message names where and the last good checkpoint."""


@dataclass
class RunResult:
    """What a finished run reports."""

    out_dir: Path
    best_acc: float
    last_acc: float
    epochs: int
    seconds: float
    params: int


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally make torch deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_time_first(x: torch.Tensor) -> torch.Tensor:
    """Batches of event frames come as ``[B, T, 2, H, W]``; models take ``[T, B, 2, H, W]``. Images pass as is."""
    return x.transpose(0, 1) if x.dim() == 5 else x


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a config names, sized for its dataset (classes, channels, image size)."""
    info = dataset_info(cfg.data.name, cfg.data.root, img_size=cfg.data.img_size, **cfg.data.kwargs)
    overrides: dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size)
    if cfg.model.T is not None:
        overrides["T"] = cfg.model.T
    elif info.T is not None:
        overrides["T"] = info.T
    if cfg.model.attn is not None:
        overrides["attn"] = cfg.model.attn
    overrides.update(cfg.model.kwargs)
    return create_model(cfg.model.name, **overrides)


def build_loaders(cfg: TrainConfig, T: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for the config's dataset."""
    opts: dict[str, Any] = dict(cfg.data.kwargs)
    if cfg.data.img_size:
        opts["img_size"] = cfg.data.img_size
    if cfg.data.download:
        opts["download"] = True
    if T is not None and cfg.data.name not in ("digits", "cifar10", "cifar100", "imagenet", "imagefolder"):
        opts.setdefault("T", T)
    train_set = create_dataset(cfg.data.name, cfg.data.root, "train", **opts)
    test_set = create_dataset(cfg.data.name, cfg.data.root, "test", **opts)
    g = torch.Generator().manual_seed(cfg.seed)
    common = dict(num_workers=cfg.data.workers, pin_memory=torch.cuda.is_available())
    train = DataLoader(train_set, cfg.data.batch_size, shuffle=True, drop_last=False, generator=g, **common)
    test = DataLoader(test_set, cfg.data.eval_batch_size or cfg.data.batch_size, shuffle=False, **common)
    return train, test


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``loader``."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = to_time_first(x.to(device)), y.to(device)
        logits = logits_of(model(x))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / max(total, 1), loss_sum / max(total, 1)


def lr_at(epoch: float, cfg: TrainConfig) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, cosine to ``min_lr``, then cool-down at ``min_lr``."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.warmup_lr + (o.lr - o.warmup_lr) * epoch / o.warmup_epochs
    span = max(o.epochs - o.warmup_epochs, 1)
    progress = min((epoch - o.warmup_epochs) / span, 1.0)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def train(cfg: TrainConfig) -> RunResult:
    """Train and evaluate per ``cfg``; write the run folder; return the accuracies."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    model = build_model(cfg).to(device)
    train_loader, test_loader = build_loaders(cfg, getattr(model, "T", None))
    out = Path(cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    save_model_config(model, out)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    total_epochs = cfg.optim.epochs + cfg.optim.cooldown_epochs
    steps_per_epoch = len(train_loader)
    metrics_path = out / "metrics.csv"
    fields = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "seconds"]
    with metrics_path.open("w", newline="") as f:
        csv.writer(f).writerow(fields)

    params = count_parameters(model)
    print(f"model {model.default_cfg['architecture']} ({params / 1e6:.3f} M parameters, T={getattr(model, 'T', '?')})"
          f" on {cfg.data.name}, {len(train_loader.dataset)} train / {len(test_loader.dataset)} test, device {device}")
    best_acc, test_acc, last_good = -1.0, 0.0, None
    start = time.perf_counter()
    for epoch in range(total_epochs):
        model.train()
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not cfg.progress, leave=False)
        for step, (x, y) in enumerate(bar):
            lr = lr_at(epoch + step / steps_per_epoch, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = to_time_first(x.to(device)), y.to(device)
            output = model(x)
            loss = output_loss(output, criterion, y)
            if not torch.isfinite(loss):
                where = f"epoch {epoch + 1}, step {step} (batch {step} of {steps_per_epoch})"
                good = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was written yet"
                raise TrainingError(f"loss is {loss.item()} at {where}; stopping. {good}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            opt.step()
            n = y.numel()
            seen += n
            loss_sum += loss.item() * n
            correct += (logits_of(output).argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        train_secs = time.perf_counter() - t0
        test_acc, test_loss = evaluate(model, test_loader, device)
        row = [epoch + 1, f"{lr:.6g}", f"{loss_sum / seen:.4f}", f"{100 * correct / seen:.2f}", f"{test_loss:.4f}",
               f"{test_acc:.2f}", f"{seen / train_secs:.1f}", f"{time.perf_counter() - start:.1f}"]
        with metrics_path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
        save_weights(model, out / "last.safetensors", {"epoch": str(epoch + 1), "test_acc": f"{test_acc:.4f}"})
        last_good = out / "last.safetensors"
        if test_acc > best_acc:
            best_acc = test_acc
            save_weights(model, out / "best.safetensors", {"epoch": str(epoch + 1), "test_acc": f"{test_acc:.4f}"})
        tqdm.write(f"epoch {epoch + 1:3d}  loss {loss_sum / seen:.4f}  train {100 * correct / seen:6.2f}%  "
                   f"test {test_acc:6.2f}%  ({seen / train_secs:.0f} img/s)")
    seconds = time.perf_counter() - start
    return RunResult(out, best_acc, test_acc, total_epochs, seconds, params)
