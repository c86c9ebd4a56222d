"""The training configuration: typed sections, loaded from YAML, overridable by ``section.key=value``.

Unknown keys and wrong types are rejected before anything is built, with the key named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    """Which model to build: a registry name plus any builder overrides (``T``, ``attn``, ``num_classes``...)."""

    name: str = "spikformer_2_128_cifar"
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
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and schedule: AdamW with linear warm-up then cosine decay per epoch, plus cool-down epochs."""

    lr: float = 5e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_epochs: int = 2
    warmup_lr: float = 1e-6
    epochs: int = 30
    cooldown_epochs: int = 0
    label_smoothing: float = 0.0
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    """Everything one training run needs; saved beside its checkpoints as ``config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    deterministic: bool = False

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
    return cls(**kwargs)


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
