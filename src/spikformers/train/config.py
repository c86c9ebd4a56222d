"""The training configuration: typed sections, loaded from YAML, overridable by ``section.key=value``.

Unknown keys and wrong types are rejected before anything is built, with the key named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class ModelConfig:
    """Which model to build: a registry name plus any builder overrides (``T``, ``attn``, ``num_classes``...)."""

    name: str = "spikformer_2_64_cifar"
    T: int | None = None
    attn: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which dataset and how to load it."""

    name: str = "digits"
    root: str | None = None
    img_size: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    workers: int = 0
    download: bool = False
    limit_train: int | None = None  # use a fixed random subset of this many training samples (quick checks)
    limit_test: int | None = None  # evaluate on the first this many test samples
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and schedule: AdamW with linear warm-up then cosine decay per epoch, plus cool-down epochs."""

    lr: float = 5e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_epochs: int = 2
    warmup_lr: float = 1e-6
    epochs: int = 20
    cooldown_epochs: int = 0
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    drop_path: float = 0.0


@dataclass
class MixupConfig:
    """timm ``Mixup`` / CutMix on the training batches; off when both alphas are 0. Targets become soft labels."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: Literal["batch", "pair", "elem"] = "batch"
    off_epoch: int | None = None  # from this (0-based) epoch on, no mixing (SPEC 4: CIFAR mixup off after 200)


@dataclass
class LoopConfig:
    """How the loop runs: precision, EMA, multi-pass loss weight, distributed options, logging."""

    amp: Literal["none", "bf16", "fp16"] = "none"
    ema: bool = False
    ema_decay: float = 0.9998
    ema_eval: bool = False  # report (and save as best/last) the EMA weights' accuracy instead of the model's
    beta: float | None = None  # SpiLiFormer second-pass weight (None: the model's own)
    beta_end: float | None = None  # ramp beta linearly per epoch from ``beta`` to this
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    tensorboard: bool = True  # also log to <out>/tb when tensorboard is installed
    save_every: int = 1  # write the resume state every N epochs (always at the last)
    save_every_steps: int | None = None  # also every N optimisation steps, inside epochs (None or 0: off)
    # speed and memory (docs/training.md, "Speed and memory")
    neuron_backend: str = "auto"  # auto | cpp | triton | eager | reference
    neuron_saved: str = "auto"  # what neurons keep for backward: auto | recompute | q24 | exact | q16
    grad_checkpointing: bool = False  # recompute each block in backward (Spikformer / HST backbones)
    recompute_bn_neuron: bool = False  # recompute batch norm + neuron of each linear/conv unit in backward
    compact_spikes: bool = True  # layers keep spike inputs as bits / bytes for backward
    event_driven: bool = True  # CPU: linears on sparse spikes add the weight columns that fired
    fused_bn_neuron: bool = True  # CPU: each unit's batch norm + LIF as one kernel that keeps only its input
    keep_freed_memory: bool = True  # CPU (glibc): large freed blocks stay in the process (memory.keep_freed_memory)


@dataclass
class TrainConfig:
    """Everything one training run needs; saved beside its checkpoints as ``config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    deterministic: bool = False
    resume: str | None = None  # run folder whose state.safetensors to continue from

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int -> float), else raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {tp}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected true/false, got {type(value).__name__} {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected int, got bool {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; {prefix.rstrip('.') or 'the top level'} takes {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, value, tp)
    obj = cls(**kwargs)
    if cls is TrainConfig:
        _check_values(obj)
    return obj


def _check_values(cfg: TrainConfig) -> None:
    """Range checks that types cannot express, each naming its key."""
    checks = [
        ("data.batch_size", cfg.data.batch_size >= 1, "at least 1"),
        ("optim.epochs", cfg.optim.epochs >= 1, "at least 1"),
        ("optim.lr", cfg.optim.lr > 0, "positive"),
        ("optim.warmup_epochs", 0 <= cfg.optim.warmup_epochs, "0 or more"),
        ("optim.cooldown_epochs", 0 <= cfg.optim.cooldown_epochs, "0 or more"),
        ("optim.label_smoothing", 0 <= cfg.optim.label_smoothing < 1, "in [0, 1)"),
        ("optim.drop_path", 0 <= cfg.optim.drop_path < 1, "in [0, 1)"),
        ("mixup.prob", 0 <= cfg.mixup.prob <= 1, "in [0, 1]"),
        ("train.ema_decay", 0 < cfg.train.ema_decay < 1, "in (0, 1)"),
        ("train.beta", cfg.train.beta is None or 0 <= cfg.train.beta <= 1, "in [0, 1]"),
        ("train.beta_end", cfg.train.beta_end is None or 0 <= cfg.train.beta_end <= 1, "in [0, 1]"),
        ("train.save_every", cfg.train.save_every >= 1, "at least 1"),
        ("train.save_every_steps", cfg.train.save_every_steps is None or cfg.train.save_every_steps >= 0,
         "0 (off) or more"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"config key {key!r}: must be {what}")
    if cfg.train.beta_end is not None and cfg.train.beta is None:
        raise ConfigError("config key 'train.beta_end' needs 'train.beta' (the ramp's start)")
    if cfg.train.ema_eval and not cfg.train.ema:
        raise ConfigError("config key 'train.ema_eval' needs 'train.ema: true'")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict against :class:`TrainConfig` (unknown keys and wrong types raise ConfigError)."""
    return _build(TrainConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML recipe (or the defaults) and apply ``section.key=value`` overrides (values parsed as YAML)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        data.pop("_meta", None)  # free-form provenance notes in recipes
    for item in overrides or []:
        set_key(data, item)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def set_key(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = value


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write a config as YAML."""
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
