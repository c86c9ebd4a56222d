"""The training configuration: typed sections, loaded from YAML, overridable by ``section.key=value``.

Unknown keys and wrong types are rejected before anything is built, with the key named.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
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
    skip_bad_images: bool = False  # ImageFolder: replace files that do not decode, list them after each epoch
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
    off_epoch: int | None = None  # from this (0-based) epoch on, no mixing (docs/recipes.md: CIFAR mixup off after 200)


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
    neuron_backend: str = "auto"  # auto | cpp | triton | eager | reference (see RENAMED_VALUES for old words)
    neuron_saved: str = "auto"  # what neurons keep for backward: auto | recompute | q24 | exact | q16
    grad_checkpointing: bool = False  # recompute each block in backward (Spikformer / HST backbones)
    recompute_bn_neuron: bool = False  # recompute batch norm + neuron of each linear/conv unit in backward
    compact_spikes: bool = True  # layers keep spike inputs as bits / bytes for backward
    event_driven: bool = True  # CPU: linears on sparse spikes add the weight columns that fired
    fused_bn_neuron: bool = True  # CPU: each unit's batch norm + LIF as one kernel that keeps only its input
    keep_freed_memory: bool = True  # CPU (glibc): large freed blocks stay in the process (runtime.keep_freed_memory)


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
    init: str | None = None  # start from these weights (run folder or any checkpoint `spikformers convert` reads)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


# Values renamed since a release that configs may still name: key -> {old word: new word}. A config with the old
# word loads as if it said the new one, with a FutureWarning saying so (saved run folders keep resuming).
RENAMED_VALUES: dict[str, dict[str, str]] = {
    "train.neuron_backend": {"fused": "auto"},  # "fused" was a second name of "auto"
}


def _renamed(key: str, value: Any) -> Any:
    """``value``, or its new word where :data:`RENAMED_VALUES` has one for ``key`` (with a deprecation note)."""
    new = RENAMED_VALUES.get(key, {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    warnings.warn(f"config key {key!r}: {value!r} is the old name of {new!r} and is read as {new!r}; "
                  f"write {new!r}", FutureWarning, stacklevel=2)
    return new


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


def _build(cls: type, data: dict[str, Any], prefix: str = "", errors: list[str] | None = None) -> Any:
    """Build ``cls`` from ``data``; every unknown key, wrong type and out-of-range value is one line of the
    :class:`ConfigError` raised at the end (nested sections append to the caller's ``errors``)."""
    top = errors is None
    errors = [] if errors is None else errors
    if not isinstance(data, dict):
        errors.append(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - names, key=str):
        errors.append(f"unknown config key {prefix + str(key)!r}; {prefix.rstrip('.') or 'the top level'} takes "
                      f"{sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        if name not in names:
            continue
        tp = hints[name]
        try:
            kwargs[name] = (_build(tp, value, f"{prefix}{name}.", errors) if dataclasses.is_dataclass(tp)
                            else _renamed(prefix + name, _check_type(prefix + name, value, tp)))
        except ConfigError as e:
            errors.append(str(e))
    obj = cls(**kwargs)  # from the valid keys only (the rest keep their defaults), so range checks still run
    if top:
        if cls is TrainConfig:
            errors += _value_errors(obj)
        if errors:
            raise ConfigError("\n".join(errors))
    return obj


def _value_errors(cfg: TrainConfig) -> list[str]:
    """Range checks that types cannot express: one line per bad key, naming it, the rule and the value."""
    d, o, m, t = cfg.data, cfg.optim, cfg.mixup, cfg.train
    checks: list[tuple[str, Any, bool, str]] = [
        ("model.T", cfg.model.T, cfg.model.T is None or cfg.model.T >= 1, "at least 1 (time steps)"),
        ("data.img_size", d.img_size, d.img_size is None or d.img_size >= 1, "at least 1 (pixels)"),
        ("data.batch_size", d.batch_size, d.batch_size >= 1, "at least 1"),
        ("data.eval_batch_size", d.eval_batch_size, d.eval_batch_size is None or d.eval_batch_size >= 1,
         "at least 1"),
        ("data.workers", d.workers, d.workers >= 0, "0 or more"),
        ("data.limit_train", d.limit_train, d.limit_train is None or d.limit_train >= 1,
         "at least 1 (a number of training samples; leave it unset for all)"),
        ("data.limit_test", d.limit_test, d.limit_test is None or d.limit_test >= 1,
         "at least 1 (a number of test samples; leave it unset for all)"),
        ("optim.epochs", o.epochs, o.epochs >= 1, "at least 1"),
        ("optim.lr", o.lr, o.lr > 0, "positive"),
        ("optim.min_lr", o.min_lr, o.min_lr >= 0, "0 or more"),
        ("optim.warmup_lr", o.warmup_lr, o.warmup_lr >= 0, "0 or more"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, "0 or more"),
        ("optim.warmup_epochs", o.warmup_epochs, o.warmup_epochs >= 0, "0 or more"),
        ("optim.cooldown_epochs", o.cooldown_epochs, o.cooldown_epochs >= 0, "0 or more"),
        ("optim.label_smoothing", o.label_smoothing, 0 <= o.label_smoothing < 1, "in [0, 1)"),
        ("optim.clip_grad", o.clip_grad, o.clip_grad is None or o.clip_grad > 0, "positive (or null for none)"),
        ("optim.drop_path", o.drop_path, 0 <= o.drop_path < 1, "in [0, 1)"),
        ("mixup.mixup_alpha", m.mixup_alpha, m.mixup_alpha >= 0, "0 or more"),
        ("mixup.cutmix_alpha", m.cutmix_alpha, m.cutmix_alpha >= 0, "0 or more"),
        ("mixup.prob", m.prob, 0 <= m.prob <= 1, "in [0, 1]"),
        ("mixup.switch_prob", m.switch_prob, 0 <= m.switch_prob <= 1, "in [0, 1]"),
        ("mixup.off_epoch", m.off_epoch, m.off_epoch is None or m.off_epoch >= 0, "0 or more (or null)"),
        ("train.ema_decay", t.ema_decay, 0 < t.ema_decay < 1, "in (0, 1)"),
        ("train.beta", t.beta, t.beta is None or 0 <= t.beta <= 1, "in [0, 1]"),
        ("train.beta_end", t.beta_end, t.beta_end is None or 0 <= t.beta_end <= 1, "in [0, 1]"),
        ("train.save_every", t.save_every, t.save_every >= 1, "at least 1 (epochs)"),
        ("train.save_every_steps", t.save_every_steps, t.save_every_steps is None or t.save_every_steps >= 0,
         "0 (off) or more"),
    ]
    errors = [f"config key {key!r}: must be {what}, got {value!r}" for key, value, ok, what in checks if not ok]
    for key, value in (("optim.lr", o.lr), ("optim.min_lr", o.min_lr), ("optim.warmup_lr", o.warmup_lr),
                       ("optim.weight_decay", o.weight_decay)):
        if not math.isfinite(value):  # NaN passes no comparison above, inf passes some
            errors.append(f"config key {key!r}: must be a finite number, got {value!r}")
    if t.beta_end is not None and t.beta is None:
        errors.append("config key 'train.beta_end' needs 'train.beta' (the ramp's start)")
    if t.ema_eval and not t.ema:
        errors.append("config key 'train.ema_eval' needs 'train.ema: true'")
    return errors


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict against :class:`TrainConfig` (unknown keys and wrong types raise ConfigError)."""
    return _build(TrainConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML recipe (or the defaults) and apply ``section.key=value`` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        data.pop("_meta", None)  # free-form provenance notes in recipes
    for item in overrides or []:
        set_key(data, item)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(e).splitlines()) if path else str(e)) from None


def _read_yaml(path: Path) -> Any:
    """The parsed YAML of a config file, or a one-line :class:`ConfigError` saying why it cannot be read."""
    import yaml

    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; expected a YAML file such as configs/<recipe>.yaml")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None


def set_key(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None
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
