"""Model names -> builders with their published defaults. The one place where configurations live.

A name is ``{family}_{L}_{D}[_{variant}]``: ``spikformer_8_768`` (ImageNet), ``spikformer_4_384_cifar``,
``spikformer_2_256_dvs``. Any depth L and width D build; :func:`list_models` lists the published ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class Family:
    """A model family: a builder, per-variant defaults and the published (depth, dim) pairs per variant."""

    name: str
    builder: Callable[..., nn.Module]
    variants: dict[str, Callable[[int, int], dict[str, Any]]]
    published: dict[str, list[tuple[int, int]]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    attention: str = "ssa"  # what `spikformers models` shows when the config names no ``attn``


_FAMILIES: dict[str, Family] = {}
_NAME = re.compile(r"^(?P<family>[a-z0-9]+)_(?P<depth>\d+)_(?P<dim>\d+)(?:_(?P<variant>[a-z0-9]+))?$")


def register_family(family: Family) -> Family:
    """Add a family of models; its published names become visible to :func:`list_models` and to timm."""
    _FAMILIES[family.name] = family
    _register_with_timm_if_loaded()
    return family


def model_name(family: str, depth: int, dim: int, variant: str) -> str:
    """The registry name of a configuration (variant ``"imagenet"`` has no suffix)."""
    suffix = "" if variant == "imagenet" else f"_{variant}"
    return f"{family}_{depth}_{dim}{suffix}"


def parse_name(name: str) -> tuple[Family, int, int, str]:
    """Split a model name into (family, depth, dim, variant), or raise listing what exists."""
    m = _NAME.match(name)
    if not m or m["family"] not in _FAMILIES:
        raise ValueError(
            f"unknown model {name!r}: names look like 'spikformer_4_384_cifar'; "
            f"families are {sorted(_FAMILIES)}; run `spikformers models` for the published ones"
        )
    fam = _FAMILIES[m["family"]]
    variant = m["variant"] or "imagenet"
    if variant not in fam.variants:
        raise ValueError(
            f"model {name!r}: family {fam.name!r} has variants {sorted(fam.variants)}, not {variant!r}"
        )
    return fam, int(m["depth"]), int(m["dim"]), variant


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full keyword configuration that :func:`create_model` passes to the builder."""
    fam, depth, dim, variant = parse_name(name)
    cfg: dict[str, Any] = {**fam.defaults, **fam.variants[variant](depth, dim), "depth": depth, "dim": dim}
    cfg.update(overrides)
    return cfg


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a model by name, e.g. ``create_model("spikformer_4_384_cifar", num_classes=100, T=2)``.

    Overrides are any builder argument (``num_classes``, ``img_size``, ``in_chans``, ``T``, ``attn``, ...), and
    ``neurons``: LIF settings per module name pattern, set after building (see :func:`set_lif_params`).
    ``model.default_cfg`` records the name and the full configuration so checkpoints can rebuild it.
    ``checkpoint_path``: load weights from a checkpoint in any format spikformers reads (a run or Hub folder,
    a spikingjelly or official Spikformer / QKFormer / SDT checkpoint; :func:`spikformers.convert.import_checkpoint`).
    """
    if checkpoint_path is not None:
        from .convert.importer import load_checkpoint

        return load_checkpoint(checkpoint_path, name, **overrides)
    if pretrained:
        raise ValueError("spikformers ships no pretrained weights; load a checkpoint with `spikformers eval`")
    fam = parse_name(name)[0]
    cfg = model_config(name, **overrides)
    try:
        model = fam.builder(**{k: v for k, v in cfg.items() if k != "neurons"})
    except TypeError as e:
        raise TypeError(f"create_model({name!r}): {e}") from None
    if cfg.get("neurons"):
        set_lif_params(model, cfg["neurons"])
    model.default_cfg = {"architecture": name, "overrides": dict(overrides), "config": cfg}
    return model


LIF_SETTINGS = {"tau": float, "v_th": float, "v_reset": float, "alpha": float, "detach_reset": bool}


def set_lif_params(model: nn.Module, neurons: dict[str, dict[str, Any]]) -> None:
    """Set LIF parameters by module name: ``{"stage1.*.mlp.*": {"detach_reset": False}, ...}``.

    Keys are shell-style patterns matched against ``model.named_modules()`` names of LIF neurons; values set any
    of ``tau``, ``v_th``, ``v_reset``, ``alpha``, ``detach_reset`` (what a converted network's neurons need, e.g.
    :func:`spikformers.from_spikingjelly`). A pattern that matches no LIF, or an unknown setting, is an error.
    """
    import fnmatch

    from .neurons import LIF

    lifs = {name: m for name, m in model.named_modules() if isinstance(m, LIF)}
    for pattern, settings in neurons.items():
        names = [n for n in lifs if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            example = next(iter(lifs), "none")
            raise ValueError(
                f"neurons: {pattern!r} matches no LIF neuron of the model (LIF names look like {example!r})"
            )
        if not isinstance(settings, dict) or set(settings) - set(LIF_SETTINGS):
            raise ValueError(
                f"neurons[{pattern!r}]: expected a mapping of LIF settings {sorted(LIF_SETTINGS)}, got {settings!r}"
            )
        if settings.get("tau", 1.0) < 1.0:
            raise ValueError(f"neurons[{pattern!r}]: LIF tau must be >= 1, got {settings['tau']}")
        for n in names:
            for key, value in settings.items():
                setattr(lifs[n], key, LIF_SETTINGS[key](value))


def list_models(pattern: str = "*") -> list[str]:
    """Published model names matching a shell-style pattern, sorted."""
    import fnmatch

    names = {
        model_name(fam.name, depth, dim, variant)
        for fam in _FAMILIES.values()
        for variant, pairs in fam.published.items()
        for depth, dim in pairs
    }
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# timm registration: done as soon as timm's registry is importable, without importing timm ourselves
# (importing timm costs seconds, and `import spikformers` must stay fast).

_timm_done: set[str] = set()
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")


def register_with_timm() -> None:
    """Register every published name with timm so that ``timm.create_model(name)`` works."""
    from timm.models import register_model

    for name in list_models():
        if name in _timm_done:
            continue

        def entry(pretrained: bool = False, _name: str = name, **kwargs: Any) -> nn.Module:
            timm_cfg = {key: kwargs.pop(key, None) for key in _TIMM_ONLY_KWARGS}  # timm's factory adds these
            if pretrained:  # weights where timm's pretrained config points (a Hub repo, a folder, a file)
                from .convert.hub import create_pretrained

                return create_pretrained(_name, timm_cfg["pretrained_cfg"], timm_cfg["pretrained_cfg_overlay"],
                                         **kwargs)
            return create_model(_name, **kwargs)

        entry.__name__ = entry.__qualname__ = name
        entry.__module__ = __name__
        register_model(entry)
        _timm_done.add(name)


def _register_with_timm_if_loaded() -> None:
    import sys

    if "timm.models" in sys.modules and hasattr(sys.modules["timm.models"], "register_model"):
        register_with_timm()


def _install_timm_hook() -> None:
    """Register with timm right after ``timm.models`` finishes importing, whenever that happens."""
    import importlib.abc
    import importlib.machinery
    import sys

    if "timm.models" in sys.modules:
        _register_with_timm_if_loaded()
        return

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
            if fullname != "timm.models":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_register(module):  # type: ignore[no-untyped-def]
                exec_module(module)
                register_with_timm()

            spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _Finder())


# ---------------------------------------------------------------------------------------------------------
# Spikformer (docs/models.md): ImageNet 224 px / 1000 classes, CIFAR 32 px / 10 classes, DVS 128 px / 2 ch / T=16.


def _spikformer_imagenet(depth: int, dim: int) -> dict[str, Any]:
    return dict(img_size=224, in_chans=3, num_classes=1000, T=4, sps="imagenet", heads=8, qkv_bias=False)


def _spikformer_cifar(depth: int, dim: int) -> dict[str, Any]:
    return dict(img_size=32, in_chans=3, num_classes=10, T=4, sps="cifar", heads=max(1, dim // 32), qkv_bias=True)


def _spikformer_dvs(depth: int, dim: int) -> dict[str, Any]:
    return dict(
        img_size=128, in_chans=2, num_classes=10, T=16, sps="dvs", heads=16, qkv_bias=False,
        attn_defaults={"scale": 0.25},
    )


SPIKFORMER_VARIANTS = {"imagenet": _spikformer_imagenet, "cifar": _spikformer_cifar, "dvs": _spikformer_dvs}
SPIKFORMER_PUBLISHED = {
    "imagenet": [(8, 384), (6, 512), (8, 512), (10, 512), (8, 768)],
    "cifar": [(4, 384), (4, 256), (2, 384)],
    "dvs": [(2, 256)],
}


def _build_spikformer(**cfg: Any) -> nn.Module:
    from .models.spikformer import Spikformer

    return Spikformer(**cfg)


register_family(
    Family(
        "spikformer", _build_spikformer, SPIKFORMER_VARIANTS, SPIKFORMER_PUBLISHED,
        description="Spikformer with SSA (Zhou et al., ICLR 2023)",
    )
)


# ---------------------------------------------------------------------------------------------------------
# A2OS2A / EST / SDT presets: the Spikformer backbone and variants with another attention (and block form).
# Same published L-D pairs as Spikformer, plus the pairs these papers' own tables name (A2OS2A's CIFAR
# ablations use 2-256; SDT publishes CIFAR 2-512).


def _with_pairs(extra: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple[int, int]]]:
    return {v: SPIKFORMER_PUBLISHED[v] + extra.get(v, []) for v in SPIKFORMER_PUBLISHED}


register_family(
    Family(
        "a2os2a", _build_spikformer, SPIKFORMER_VARIANTS, _with_pairs({"cifar": [(2, 256)]}),
        defaults={"attn": "a2os2a", "block": "spikformer"},
        description="Spikformer backbone with A2OS2A (Guo et al., CVPR 2025); block='membrane' for SDT shortcuts",
    )
)
register_family(
    Family(
        "est", _build_spikformer, SPIKFORMER_VARIANTS, _with_pairs({}),
        defaults={"attn": "psa"},
        description="Spikformer backbone with EST's partial-information attention PSA (arXiv 2210.01208)",
    )
)


def _no_qkv_bias(variant: Callable[[int, int], dict[str, Any]]) -> Callable[[int, int], dict[str, Any]]:
    return lambda depth, dim: {**variant(depth, dim), "qkv_bias": False}  # SDT's Q/K/V convs have no bias


register_family(
    Family(
        "sdt", _build_spikformer, {k: _no_qkv_bias(f) for k, f in SPIKFORMER_VARIANTS.items()},
        _with_pairs({"cifar": [(2, 512)]}),
        defaults={"attn": "sdsa", "block": "membrane"},
        description="Spike-driven Transformer: SDSA with membrane shortcuts (Yao et al., NeurIPS 2023)",
    )
)
# end of A2OS2A / EST / SDT presets


# ---------------------------------------------------------------------------------------------------------
# SpiLiFormer (docs/models.md): QKFormer's hierarchical backbone (HST) with FF-LiDiff / FB-LiDiff and a feedback
# second pass. imagenet: 224 px, 1000 classes; cifar: 32 px, 100 classes (the published 7.04 M is the
# CIFAR-100 model, whose decoder is BN-first with aug 2.0; use decoder_norm="bn", aug=1.0 for the CIFAR-10
# file); dvs: 128 px, 2 channels, T=16, 10 classes, non-doubled FB with a BN decoder (published 1.57 M;
# N-Caltech101 is num_classes=101; the CIFAR10-DVS file is doubled_kv=True, decoder_norm="none").


def _spiliformer_imagenet(depth: int, dim: int) -> dict[str, Any]:
    return dict(
        img_size=224, in_chans=3, num_classes=1000, T=4, embed="imagenet", heads=12, mlp_ratio=4.0,
        q_split=True, doubled_kv=False, decoder_order="forward", decoder_norm="bn", aug=1.0, beta=0.8,
    )


def _spiliformer_cifar(depth: int, dim: int) -> dict[str, Any]:
    return dict(
        img_size=32, in_chans=3, num_classes=100, T=4, embed="cifar", heads=8, mlp_ratio=4.0,
        q_split=True, doubled_kv=False, decoder_order="reverse", decoder_norm="bn_first", aug=2.0, beta=0.8,
    )


def _spiliformer_dvs(depth: int, dim: int) -> dict[str, Any]:
    return dict(
        img_size=128, in_chans=2, num_classes=10, T=16, embed="dvs", heads=16, mlp_ratio=1.0,
        q_split=False, doubled_kv=False, decoder_order="reverse", decoder_norm="bn", aug=1.0, beta=0.5,
    )


SPILIFORMER_VARIANTS = {"imagenet": _spiliformer_imagenet, "cifar": _spiliformer_cifar, "dvs": _spiliformer_dvs}
HST_PUBLISHED = {"imagenet": [(10, 768)], "cifar": [(4, 384)], "dvs": [(2, 256)]}

_SPILIFORMER_ONLY = ("q_split", "doubled_kv", "decoder_order", "decoder_norm", "aug", "beta")


def _qkformer_variant(variant: Callable[[int, int], dict[str, Any]]) -> Callable[[int, int], dict[str, Any]]:
    return lambda depth, dim: {k: v for k, v in variant(depth, dim).items() if k not in _SPILIFORMER_ONLY}


def _build_spiliformer(**cfg: Any) -> nn.Module:
    from .models.hst import SpiLiFormer

    return SpiLiFormer(**cfg)


def _build_hst(**cfg: Any) -> nn.Module:
    from .models.hst import HST

    return HST(**cfg)


register_family(
    Family(
        "spiliformer", _build_spiliformer, SPILIFORMER_VARIANTS, HST_PUBLISHED,
        description="SpiLiFormer: HST with FF-/FB-LiDiff lateral inhibition and feedback (Zheng et al., ICCV 2025)",
        attention="ff_lidiff+fb_lidiff",
    )
)
register_family(
    Family(
        "qkformer", _build_hst, {k: _qkformer_variant(f) for k, f in SPILIFORMER_VARIANTS.items()},
        {"imagenet": [(10, 768)], "cifar": [(4, 384)]},
        description="QKFormer's hierarchical spiking transformer (token attention, SSA last stage), one pass",
        attention="qk_token+ssa",
    )
)
# end of SpiLiFormer presets

_install_timm_hook()
