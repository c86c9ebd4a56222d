"""The training loop: build everything from a :class:`TrainConfig`, train, evaluate, checkpoint, resume.

It knows nothing about particular models: outputs go through :func:`spikformers.outputs.output_loss`, so a
multi-pass model (SpiLiFormer) trains with its weighted loss and is scored on its final logits. The same
loop runs on one process or under ``torchrun`` (DistributedDataParallel, see ``distributed.py``).
"""

from __future__ import annotations

import base64
import csv
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import create_dataset, dataset_info, is_event_dataset
from ..data.images import report_skipped_images
from ..outputs import logits_of, output_loss
from ..registry import count_parameters, create_model
from . import distributed as dist_utils
from .checkpoint import (
    join_state_dict,
    load_train_state,
    save_model_config,
    save_train_state,
    save_weights,
    split_state_dict,
)
from .config import ConfigError, TrainConfig, dump_config
from .run_folder import RunFolder, RunFolderError, RunProgress, default_run_dir

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "seconds",
                 "ema_test_acc", "beta"]
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or Inf loss); the message names where and the last good checkpoint."""


@dataclass
class RunResult:
    """What a finished run reports (on every process; only rank 0 wrote files)."""

    out_dir: Path
    best_acc: float
    last_acc: float
    epochs: int
    seconds: float
    params: int
    rank: int = 0
    world_size: int = 1


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally make torch deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def resolve_device(device: str) -> torch.device:
    """The device a ``--device`` / ``device:`` string names: ``auto`` (CUDA when present, else the CPU), ``cpu``,
    ``cuda``, ``cuda:N``, ``mps`` (where torch has it).

    Anything else, or a GPU that is not there, raises a one-line ValueError listing what is accepted or saying
    what torch found.
    """
    name = str(device).strip().lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or (name == "mps" and mps):
        return torch.device(name)
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        accepted = "auto, cpu, cuda, cuda:N" + (", mps" if mps else "")
        raise ValueError(f"unknown device {device!r}; expected one of: {accepted}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is usable here ({cuda_summary()}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if match[1] is not None and int(match[1]) >= count:
        raise ValueError(f"device {device!r}: {count} CUDA device(s) found, cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def cuda_summary() -> str:
    """What torch knows of CUDA here, in one phrase: its version, what it was built with, how many GPUs it sees."""
    if torch.version.cuda:
        built = f"built with CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        built = f"built with ROCm {torch.version.hip}"
    else:
        built = "built without CUDA"
    return f"torch {torch.__version__}, {built}, {torch.cuda.device_count()} CUDA device(s) found"


def effective_amp(amp: str, device: torch.device) -> str:
    """The precision ``train.amp`` runs at on ``device``: fp16 (with its GradScaler) on CUDA only; elsewhere a
    recipe's fp16 runs in float32 (``"none"``), so that recipes run as written on a CPU. bf16 and none as asked."""
    return "none" if amp == "fp16" and device.type != "cuda" else amp


def amp_note(amp: str, device: torch.device) -> str | None:
    """The one line a run prints when :func:`effective_amp` changes what the config asks for, else None."""
    if effective_amp(amp, device) == amp:
        return None
    return (f"note: train.amp fp16 needs CUDA; on {device.type} this run computes in float32 (amp none). "
            "For mixed precision here: --amp bf16")


def to_time_first(x: torch.Tensor) -> torch.Tensor:
    """Batches of event frames come as ``[B, T, 2, H, W]``; models take ``[T, B, 2, H, W]``. Images pass as is."""
    return x.transpose(0, 1) if x.dim() == 5 else x


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a config names, sized for its dataset (classes, channels, image size)."""
    return create_model(cfg.model.name, **model_overrides(cfg))


def model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The :func:`create_model` overrides a config asks for: sized for its dataset, plus the config's own."""
    info = dataset_info(cfg.data.name, cfg.data.root, img_size=cfg.data.img_size, **cfg.data.kwargs)
    overrides: dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size)
    if cfg.model.T is not None:
        overrides["T"] = cfg.model.T
    elif info.T is not None:
        overrides["T"] = info.T
    if cfg.model.attn is not None:
        overrides["attn"] = cfg.model.attn
    overrides.update(cfg.model.kwargs)
    if cfg.optim.drop_path > 0:  # stochastic depth, ramped linearly over the blocks up to this rate
        overrides["drop_path_rate"] = cfg.optim.drop_path
    return overrides


# which config key sets each create_model argument (the rest come from the model name)
_MODEL_ARG_KEYS = {"T": "model.T", "img_size": "data.img_size", "attn": "model.attn",
                   "drop_path_rate": "optim.drop_path"}


def check_model_config(cfg: TrainConfig) -> None:
    """Check the model's arguments (time steps, image size against the patch layout, widths, heads) without
    building anything; every problem is one line of a :class:`ConfigError` naming its config key."""
    from ..registry import model_problems

    problems = model_problems(cfg.model.name, **model_overrides(cfg))
    if problems:
        keys = [f"model.kwargs.{arg}" if arg in cfg.model.kwargs else _MODEL_ARG_KEYS.get(arg, "model.name")
                for arg, _ in problems]
        raise ConfigError("\n".join(f"config key {key!r} ({cfg.model.name}): {problem}"
                                    for key, (_, problem) in zip(keys, problems)))


def load_init_weights(model: nn.Module, path: str, name: str) -> list[str]:
    """Fine-tuning (``init``): copy into ``model`` the weights of a run folder or any checkpoint the converters read.

    Every tensor must match by name and shape, except the classifier head (``head.*``), which stays fresh when the
    class counts differ; anything else that differs is refused naming the keys. Returns the lines to print.
    """
    from ..convert.importer import load_checkpoint

    source_path = Path(path)
    if not source_path.exists():
        raise ConfigError(f"config key 'init': no run folder or checkpoint {path}")
    source = load_checkpoint(source_path, None if source_path.is_dir() else name).state_dict()
    target = model.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    differ = sorted(k for k in set(target) & set(source) if target[k].shape != source[k].shape)
    if missing or unexpected or any(not k.startswith("head.") for k in differ):
        shapes = [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in differ]
        raise ConfigError(f"config key 'init': the weights in {path} do not fit {name}: missing {missing[:8]}, "
                          f"unexpected {unexpected[:8]}, shapes that differ (checkpoint vs model) {shapes[:8]}")
    model.load_state_dict({k: v for k, v in source.items() if k not in differ}, strict=False)
    lines = [f"init: {len(target) - len(differ)} tensors from {path}"]
    if differ:
        lines.append(f"init: {', '.join(differ)} kept fresh (the checkpoint has another number of classes)")
    return lines


def build_loaders(cfg: TrainConfig, T: int | None = None, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for the config's dataset; with ``world_size`` > 1 each process gets its shard."""
    from torch.utils.data import DistributedSampler, RandomSampler

    from .resumable import PositionSeeded, ResumableSampler

    opts: dict[str, Any] = dict(cfg.data.kwargs)
    if cfg.data.img_size:
        opts["img_size"] = cfg.data.img_size  # event datasets resize their frames to it
    if cfg.data.download:
        opts["download"] = True
    if cfg.data.skip_bad_images:
        opts["skip_bad_images"] = True
    if T is not None and is_event_dataset(cfg.data.name):
        opts.setdefault("T", T)
    train_set = create_dataset(cfg.data.name, cfg.data.root, "train", **opts)
    test_set = create_dataset(cfg.data.name, cfg.data.root, "test", **opts)
    if cfg.data.limit_train is not None and cfg.data.limit_train < len(train_set):  # type: ignore[arg-type]
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))  # type: ignore
        train_set = Subset(train_set, keep[: cfg.data.limit_train].tolist())
    if cfg.data.limit_test is not None and cfg.data.limit_test < len(test_set):  # type: ignore[arg-type]
        test_set = Subset(test_set, range(cfg.data.limit_test))
    g = torch.Generator().manual_seed(cfg.seed + rank)
    common: dict[str, Any] = dict(num_workers=cfg.data.workers, pin_memory=torch.cuda.is_available(),
                                  persistent_workers=False)
    eval_bs = cfg.data.eval_batch_size or cfg.data.batch_size
    if world_size > 1:
        base: Any = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=cfg.seed, drop_last=drop_last)
        shard = dist_utils.ShardSampler(len(test_set), rank, world_size)  # type: ignore[arg-type]
        test = DataLoader(test_set, eval_bs, sampler=shard, **common)
    else:
        base = RandomSampler(train_set, generator=g)  # what shuffle=True builds
        test = DataLoader(test_set, eval_bs, shuffle=False, **common)
    # an epoch can start part-way (mid-epoch resume); with workers each batch is seeded by its position
    positions = cfg.data.workers > 0
    sampler = ResumableSampler(base, positions=positions)
    train = DataLoader(PositionSeeded(train_set) if positions else train_set, cfg.data.batch_size, sampler=sampler,
                       drop_last=drop_last, generator=g, **common)
    return train, test


def autocast_for(device: torch.device, amp: str) -> Any:
    """The autocast context of ``train.amp`` on ``device`` (disabled for ``"none"``, and for fp16 off CUDA)."""
    dtype = AMP_DTYPES[effective_amp(amp, device)]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)



@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none", chunk: int | None = None
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``loader`` (summed over all processes).

    ``chunk``: run the T steps ``chunk`` at a time (:func:`~spikformers.memory.chunked_forward`: the same
    logits, the activation memory of a ``chunk``-step forward); None runs all T at once.
    """
    model.eval()
    if chunk is not None:
        from ..memory import chunked_forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            return chunked_forward(model, x, chunk)
    else:
        forward = model
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = to_time_first(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = logits_of(forward(x)).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    correct, total, loss_sum = dist_utils.all_reduce_sums([correct, total, loss_sum], device)
    return 100.0 * correct / max(total, 1), loss_sum / max(total, 1)


def lr_at(epoch: float, cfg: TrainConfig) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, cosine to ``min_lr``, then cool-down at ``min_lr``."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.warmup_lr + (o.lr - o.warmup_lr) * epoch / o.warmup_epochs
    span = max(o.epochs - o.warmup_epochs, 1)
    progress = min((epoch - o.warmup_epochs) / span, 1.0)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def beta_at(epoch: int, cfg: TrainConfig, total_epochs: int) -> float | None:
    """The second-pass loss weight for an epoch: ``train.beta``, ramped linearly to ``train.beta_end``."""
    t = cfg.train
    if t.beta is None:
        return None
    if t.beta_end is None or total_epochs <= 1:
        return t.beta
    return t.beta + (t.beta_end - t.beta) * epoch / (total_epochs - 1)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices and kernels only (not on biases, norms, embeddings of ndim 1)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr,
    )


def build_mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm's ``Mixup`` for the config (with its label smoothing), or None when mixup and cutmix are off."""
    m = cfg.mixup
    if m.mixup_alpha <= 0 and m.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                 mode=m.mode, label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)


def wrap_model(model: nn.Module, cfg: TrainConfig, info: dist_utils.DistInfo) -> nn.Module:
    """Move ``model`` to its device; under several processes convert to SyncBatchNorm (if asked) and wrap in DDP."""
    model = model.to(info.device)
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def check_loop_config(cfg: TrainConfig, device: torch.device, world_size: int) -> None:
    """Reject settings the device cannot run, before anything trains."""
    if cfg.train.sync_bn and world_size > 1 and device.type != "cuda":
        raise ConfigError("config key 'train.sync_bn': torch's SyncBatchNorm runs on CUDA only; set it false on CPU")
    if cfg.mixup.mixup_alpha > 0 or cfg.mixup.cutmix_alpha > 0:
        if cfg.data.batch_size % 2:
            raise ConfigError(f"config key 'data.batch_size': mixup needs an even batch, got {cfg.data.batch_size}")
    from ..kernels import BACKENDS
    from ..kernels.common import SAVED_CHOICES

    for key, value, choices in (("neuron_backend", cfg.train.neuron_backend, BACKENDS),
                                ("neuron_saved", cfg.train.neuron_saved, SAVED_CHOICES)):
        if value not in choices:
            raise ConfigError(f"config key 'train.{key}': expected one of {list(choices)}, got {value!r}")


# ------------------------------------------------------------------------------------------------ RNG state
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(loader_generator: torch.Generator | None) -> dict[str, Any]:
    """This process's Python, NumPy, torch (CPU and CUDA) and data-loader generator states, JSON-able."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, key.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    if loader_generator is not None:
        state["loader"] = _b64(loader_generator.get_state())
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_unb64(state["cuda"]))
    if "loader" in state and loader_generator is not None:
        loader_generator.set_state(_unb64(state["loader"]))


# ------------------------------------------------------------------------------------------------ logging
class MetricsLog:
    """Per-epoch metrics to ``metrics.csv`` and, when tensorboard is installed, to ``<out>/tb`` (rank 0 only)."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, keep_epochs: int | None = None) -> None:
        self.path, self.enabled, self.tb = out / "metrics.csv", enabled, None
        if not enabled:
            return
        rows: list[list[str]] = []
        if keep_epochs is not None and self.path.exists():  # resuming: keep the rows the state covers
            with self.path.open(newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= keep_epochs]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows([METRIC_FIELDS, *rows])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed: metrics go to metrics.csv only (pip install tensorboard)")
            else:
                self.tb = SummaryWriter(str(out / "tb"))

    def write(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics."""
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in METRIC_FIELDS])
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


# ------------------------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, overwrite: bool = False, progress: RunProgress | None = None) -> RunResult:
    """Train and evaluate per ``cfg`` (one process, or each process of a torchrun job); write the run folder.

    A folder that already holds a run is refused unless ``cfg.resume`` continues it or ``overwrite`` moves the
    old run aside (``run_folder.py``). Every setting is checked before anything is built; a start that fails or
    is interrupted before writing weights leaves no run folder behind. ``progress`` (if given) is kept up to
    date with the folder, epoch and step, for reporting an interruption.
    """
    from ..kernels import kernel_config

    progress = progress if progress is not None else RunProgress()
    resolve_device(cfg.device)  # unknown device strings and missing GPUs stop here, before anything
    info = dist_utils.init_distributed(cfg.device)
    try:
        with kernel_config(**kernel_options(cfg)):  # the run's kernel switches; the caller's come back on exit
            progress.folder = _plan_run_folder(cfg, overwrite, info)
            check_model_config(cfg)
            check_loop_config(cfg, info.device, info.world_size)
            note = amp_note(cfg.train.amp, info.device)
            if note and info.is_main:
                print(note)
            result = _train(cfg, info, progress)
    except BaseException:
        if info.is_main and progress.folder is not None:
            try:
                progress.removed = progress.folder.undo()  # a start that wrote no weights leaves nothing behind
            except OSError:  # leave the folder as it is rather than hide the error that stopped the run
                pass
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    dist_utils.cleanup()
    return result


def _plan_run_folder(cfg: TrainConfig, overwrite: bool, info: dist_utils.DistInfo) -> RunFolder:
    """The run's folder, decided (and refused if it holds another run) on rank 0 for every process."""
    folder, refusal = None, None
    if info.is_main:
        path = Path(cfg.out or cfg.resume or default_run_dir())
        folder = RunFolder(path, resume=cfg.resume is not None and Path(cfg.resume) == path, overwrite=overwrite)
        try:
            folder.check()
        except RunFolderError as e:
            refusal = str(e)
    path_str, resume, refusal = dist_utils.broadcast_object(
        (str(folder.path), folder.resume, refusal) if folder is not None else None)
    if refusal:
        raise RunFolderError(refusal)
    return folder if folder is not None else RunFolder(Path(path_str), resume=resume, overwrite=overwrite)


def kernel_options(cfg: TrainConfig) -> dict[str, bool]:
    """The kernel switches ``train.*`` sets (``compact_spikes``, ``event_driven``, ``fused_bn_neuron``), as
    :func:`~spikformers.kernels.kernel_config` takes them; :func:`train` runs under them."""
    t = cfg.train
    return {"compact_spikes": t.compact_spikes, "event_driven": t.event_driven, "fused_bn_neuron": t.fused_bn_neuron}


def apply_speed_options(model: nn.Module, cfg: TrainConfig) -> None:
    """Apply the ``train.*`` speed and memory options of ``model`` (neuron backend and saved state, checkpointing,
    recomputation); the process-wide kernel switches among them are :func:`kernel_options`."""
    from ..neurons import configure_neurons

    t = cfg.train
    configure_neurons(model, backend=t.neuron_backend, saved=t.neuron_saved)
    if t.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"config key 'train.grad_checkpointing': {cfg.model.name} does not support it")
        model.set_grad_checkpointing(True)
    if t.recompute_bn_neuron:
        from ..memory import recompute_bn_neurons

        recompute_bn_neurons(model)


def _train(cfg: TrainConfig, info: dist_utils.DistInfo, progress: RunProgress) -> RunResult:
    from tqdm.auto import tqdm

    device, main = info.device, info.is_main
    if device.type == "cpu" and cfg.train.keep_freed_memory:
        from .runtime import keep_freed_memory

        keep_freed_memory()
    seed_everything(cfg.seed, cfg.deterministic)
    model = build_model(cfg)
    if cfg.init and not cfg.resume:
        for line in load_init_weights(model, cfg.init, cfg.model.name):
            if main:
                print(line)
    apply_speed_options(model, cfg)
    num_classes = model.default_cfg["config"]["num_classes"]
    if cfg.train.beta is not None and not hasattr(model, "beta"):
        raise ConfigError(f"config key 'train.beta': {cfg.model.name} has no second-pass weight beta")
    if cfg.train.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if info.enabled:
        seed_everything(cfg.seed + info.rank)  # different augmentation per process; weights come from rank 0
    mixup_fn = build_mixup(cfg, num_classes)
    train_loader, test_loader = build_loaders(cfg, getattr(model, "T", None), info.rank, info.world_size,
                                              drop_last=mixup_fn is not None)
    folder = progress.folder
    assert folder is not None, "train() plans the run folder"
    out = folder.path
    if main:
        folder.create()  # only now that the model and the data are built
        if folder.moved_to is not None:
            print(f"--overwrite: the run that was in {out} is now in {folder.moved_to}")
        dump_config(cfg, out / "config.yaml")
        save_model_config(model, out)

    opt = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=effective_amp(cfg.train.amp, device) == "fp16")
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    criterion = build_criterion(cfg, mixup_fn is not None)

    total_epochs = cfg.optim.epochs + cfg.optim.cooldown_epochs
    steps_per_epoch = len(train_loader)
    resumed, last_good = ResumePoint(), None
    if cfg.resume:
        resumed = _load_resume(Path(cfg.resume) / "state.safetensors", model, opt, scaler, ema,
                               train_loader.generator, info, steps_per_epoch, cfg.data.batch_size)
        last_good = Path(cfg.resume) / "state.safetensors"
    start_epoch, best_acc, elapsed = resumed.epoch, resumed.best_acc, resumed.seconds
    ddp_model = wrap_model(model, cfg, info)
    log = MetricsLog(out, main, cfg.train.tensorboard, keep_epochs=start_epoch if cfg.resume else None)

    params = count_parameters(model)
    if main:
        print(f"model {model.default_cfg['architecture']} ({params / 1e6:.3f} M parameters, "
              f"T={getattr(model, 'T', '?')}) on {cfg.data.name}, {len(train_loader.dataset)} train / "
              f"{len(test_loader.dataset)} test, device {device}"
              + (f" x {info.world_size} processes" if info.enabled else "")
              + (f", resuming after epoch {start_epoch}" if cfg.resume else ""))
    if start_epoch >= total_epochs and main:
        print(f"run {out} already finished its {total_epochs} epochs")
    elif resumed.step and main:
        print(f"resuming epoch {start_epoch + 1} at step {resumed.step} of {steps_per_epoch}")
    test_acc = best_acc if start_epoch >= total_epochs else 0.0
    t_start = time.perf_counter() - elapsed
    global_step = resumed.global_step if resumed.global_step is not None else start_epoch * steps_per_epoch
    save_steps = cfg.train.save_every_steps or 0
    progress.total_epochs, progress.steps_per_epoch = total_epochs, steps_per_epoch
    for epoch in range(start_epoch, total_epochs):
        ddp_model.train()
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        if mixup_fn is not None:
            mixup_fn.mixup_enabled = cfg.mixup.off_epoch is None or epoch < cfg.mixup.off_epoch
        beta = beta_at(epoch, cfg, total_epochs)
        if beta is not None:
            model.beta = beta  # type: ignore[assignment]
        beta = getattr(model, "beta", None)
        # a state saved part-way through this epoch: skip its consumed batches, continue its running metrics
        first = resumed.step if epoch == start_epoch else 0
        seen, correct, loss_sum, secs_before = resumed.train if first else (0, 0, 0.0, 0.0)
        train_loader.sampler.skip_next_epoch(first * cfg.data.batch_size)  # type: ignore[union-attr]
        # the epoch's order (and the workers' base seed) follow from this state: saved with mid-epoch states
        loader_start = train_loader.generator.get_state()  # type: ignore[union-attr]
        save_state = (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == total_epochs
        t0 = time.perf_counter() - secs_before
        lr = lr_at(epoch + max(first - 1, 0) / steps_per_epoch, cfg)
        # one loader iterator per epoch: tqdm.auto builds one of its own from a loader at once (a second set of
        # workers, a second draw of the order). The generator still advances by the base seed that extra iterator
        # drew, so a seed gives the data order it gave before.
        torch.empty((), dtype=torch.int64).random_(generator=train_loader.generator)
        batches = iter(train_loader)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not (cfg.progress and main),
                   leave=False, initial=first, total=steps_per_epoch)
        for step, (x, y) in enumerate(bar, start=first):
            progress.epoch, progress.step = epoch + 1, step
            lr = lr_at(epoch + step / steps_per_epoch, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = to_time_first(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            output, loss_value = train_step(ddp_model, model, x, y, opt, scaler, criterion, cfg, mixup_fn, ema,
                                            distributed=info.enabled, step=global_step,
                                            where=f"epoch {epoch + 1}, step {step} (batch {step} of "
                                                  f"{steps_per_epoch})", last_good=last_good)
            global_step += 1
            n = y.numel()
            seen += n
            loss_sum += loss_value.item() * n
            correct += (logits_of(output).detach().argmax(1) == y).sum().item()
            if main and cfg.progress:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                                img_s=f"{seen * info.world_size / (time.perf_counter() - t0):.0f}")
            # every save_every_steps steps, unless the epoch's end is about to write the state anyway
            if save_steps and global_step % save_steps == 0 and (step + 1 < steps_per_epoch or not save_state):
                running = [seen, correct, loss_sum, time.perf_counter() - t0]
                gathered = dist_utils.all_gather_objects(
                    ({**rng_state(None), "loader": _b64(loader_start)}, running))
                if main:
                    position = {"step": step + 1, "steps_per_epoch": steps_per_epoch, "global_step": global_step,
                                "batch_size": cfg.data.batch_size, "train": [g[1] for g in gathered]}
                    _save_resume(out / "state.safetensors", model, opt, scaler, ema, epoch, best_acc,
                                 time.perf_counter() - t_start, [g[0] for g in gathered], position=position)
                    last_good = out / "state.safetensors"
        train_secs = time.perf_counter() - t0
        seen, correct, loss_sum = dist_utils.all_reduce_sums([seen, correct, loss_sum], device)
        dist_utils.broadcast_buffers(model)  # each process's BatchNorm statistics -> rank 0's, as DDP does
        model_acc, model_loss = evaluate(model, test_loader, device, cfg.train.amp)
        ema_acc = ema_loss = None
        if ema is not None:
            ema_acc, ema_loss = evaluate(ema.module, test_loader, device, cfg.train.amp)
        report_skipped_images(epoch + 1, train_loader, test_loader)  # data.skip_bad_images: what was skipped
        use_ema = ema is not None and cfg.train.ema_eval
        test_acc, test_loss = (ema_acc, ema_loss) if use_ema else (model_acc, model_loss)
        reported = ema.module if use_ema else model  # type: ignore[union-attr]
        meta = {"epoch": str(epoch + 1), "test_acc": f"{test_acc:.4f}"}
        improved = test_acc > best_acc
        best_acc = max(best_acc, test_acc)
        rngs = dist_utils.all_gather_objects(rng_state(train_loader.generator)) if save_state else []
        if main:
            save_weights(reported, out / "last.safetensors", meta)
            if improved:
                save_weights(reported, out / "best.safetensors", meta)
            if ema is not None:
                save_weights(ema.module, out / "ema.safetensors", meta)
            log.write({"epoch": epoch + 1, "lr": float(f"{lr:.6g}"), "train_loss": round(loss_sum / seen, 4),
                       "train_acc": round(100 * correct / seen, 2), "test_loss": round(test_loss, 4),
                       "test_acc": round(test_acc, 2), "images_per_s": round(seen / train_secs, 1),
                       "seconds": round(time.perf_counter() - t_start, 1),
                       "ema_test_acc": None if ema_acc is None else round(ema_acc, 2), "beta": beta})
            if save_state:  # after the epoch's metrics row: a kill in between re-trains the epoch, row and all
                _save_resume(out / "state.safetensors", model, opt, scaler, ema, epoch + 1, best_acc,
                             time.perf_counter() - t_start, rngs)
                last_good = out / "state.safetensors"
            tqdm.write(f"epoch {epoch + 1:3d}  loss {loss_sum / seen:.4f}  train {100 * correct / seen:6.2f}%  "
                       f"test {test_acc:6.2f}%" + (f"  ema {ema_acc:6.2f}%" if ema_acc is not None else "")
                       + f"  ({seen / train_secs:.0f} img/s)")
        dist_utils.barrier()
    log.close()
    seconds = time.perf_counter() - t_start
    return RunResult(out, best_acc, test_acc, total_epochs, seconds, params, info.rank, info.world_size)


def train_step(ddp_model: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer, scaler: Any, criterion: Any, cfg: TrainConfig, mixup_fn: Any = None,
               ema: Any = None, distributed: bool = False, step: int = 0, where: str = "",
               last_good: Path | None = None) -> tuple[Any, torch.Tensor]:
    """One optimisation step (mixup, autocast, loss of any output, NaN guard, scaled backward, clipping, EMA).

    Returns the model output and the detached loss. ``ddp_model`` is what runs forward (DDP or the model).
    """
    target = y
    if mixup_fn is not None:  # timm mixes [B, C, H, W]; event frames [T, B, C, H, W] mix per sample
        x, target = mixup_fn(x, y) if x.dim() == 4 else _mixup_time_first(mixup_fn, x, y)
    with autocast_for(x.device, cfg.train.amp):
        output = ddp_model(x)
        loss = output_loss(output, criterion, target)
    loss_value = loss.detach()
    bad = (~torch.isfinite(loss_value)).float()
    if distributed:  # every process stops together, not only the one that saw the NaN
        torch.distributed.all_reduce(bad)
    if bad.item() > 0:
        good = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was written yet"
        raise TrainingError(f"loss is {loss_value.item()} at {where}; stopping. {good}")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.optim.clip_grad:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
    scaler.step(opt)
    scaler.update()
    if ema is not None:
        ema.update(model, step=step + 1)
    return output, loss_value


def build_criterion(cfg: TrainConfig, mixup: bool) -> Any:
    """Soft-target cross-entropy under mixup (targets carry the smoothing), else CE with label smoothing;
    logits are cast to float32 first (autocast)."""
    if mixup:
        from timm.loss import SoftTargetCrossEntropy

        base: nn.Module = SoftTargetCrossEntropy()
    else:
        base = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return base(logits.float(), target)

    return criterion


def _mixup_time_first(mixup_fn: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix event frames ``[T, B, C, H, W]`` with the same pairs and boxes at every time step."""
    T, B = x.shape[:2]
    mixed, target = mixup_fn(x.permute(1, 0, 2, 3, 4).reshape(B, -1, *x.shape[3:]), y)
    return mixed.reshape(B, T, *x.shape[2:]).transpose(0, 1), target


@dataclass
class ResumePoint:
    """Where a training state leaves off (the defaults: a fresh run)."""

    epoch: int = 0  # epochs finished
    step: int = 0  # batches of the next epoch already trained (0: the state was saved at an epoch boundary)
    global_step: int | None = None  # optimisation steps so far (None: epoch x steps per epoch)
    best_acc: float = -1.0
    seconds: float = 0.0
    train: tuple[int, int, float, float] = (0, 0, 0.0, 0.0)  # this process's seen, correct, loss sum, seconds


def _save_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, ema: Any, epoch: int,
                 best_acc: float, seconds: float, rngs: list[dict[str, Any]],
                 position: dict[str, Any] | None = None) -> None:
    """Write the training state; ``position`` (step, steps_per_epoch, global_step, batch_size, per-process
    running train sums) marks a state saved part-way through epoch ``epoch + 1``, whose ``rngs`` then hold the
    loader generator as it was at the start of that epoch."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_tree = split_state_dict("optim", opt.state_dict())
    tensors.update(opt_tensors)
    meta: dict[str, Any] = {"epoch": epoch, "best_acc": best_acc, "seconds": seconds, "optim": opt_tree,
                            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rngs,
                            **(position or {})}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    save_train_state(path, tensors, meta)


def _load_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, ema: Any,
                 loader_generator: torch.Generator | None, info: dist_utils.DistInfo,
                 steps_per_epoch: int, batch_size: int) -> ResumePoint:
    """Load a training state into the model, optimiser, scaler, EMA and RNGs; return where it leaves off.

    A state saved part-way through an epoch continues at the same batch with the same layout (processes, batch
    size, steps per epoch); with another layout it continues after the same fraction of the epoch, in another
    order.
    """
    from .checkpoint import check_state_dict

    tensors, meta = load_train_state(path)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    opt.load_state_dict(join_state_dict(meta["optim"], tensors))
    if meta.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    if ema is not None:
        ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if ema_state:
            ema.module.load_state_dict(ema_state)
        else:
            ema.module.load_state_dict(model.state_dict())
    rngs = meta.get("rng") or []
    same_processes = info.rank < len(rngs) and len(rngs) == info.world_size
    if same_processes:
        set_rng_state(rngs[info.rank], loader_generator)
    elif info.is_main:
        print(f"note: {path} holds RNG states of {len(rngs)} processes, this job has {info.world_size}; "
              "the data order after resuming will differ from an uninterrupted run")
    point = ResumePoint(epoch=int(meta["epoch"]), best_acc=float(meta["best_acc"]),
                        seconds=float(meta.get("seconds", 0.0)))
    step = int(meta.get("step", 0))  # states saved at epoch boundaries (and older files) have none
    if not step:
        return point
    saved_steps, sums = int(meta["steps_per_epoch"]), [tuple(t) for t in meta["train"]]
    if same_processes and saved_steps == steps_per_epoch and meta.get("batch_size") == batch_size:
        point.step, point.global_step, point.train = step, int(meta["global_step"]), sums[info.rank]  # type: ignore
        return point
    # another layout: the same fraction of the epoch is done; its running sums count once, on rank 0
    point.step = min(steps_per_epoch, round(step * steps_per_epoch / saved_steps))
    point.global_step = point.epoch * steps_per_epoch + point.step
    if info.is_main:
        seen, correct, loss_sum = (sum(t[i] for t in sums) for i in range(3))
        point.train = (int(seen), int(correct), float(loss_sum), max(float(t[3]) for t in sums))
        print(f"note: {path} was saved at step {step} of {saved_steps} of epoch {point.epoch + 1} with "
              f"{len(sums)} process(es); this job has {info.world_size} process(es) and {steps_per_epoch} steps "
              f"per epoch: it continues at step {point.step}, in a different data order")
    return point
