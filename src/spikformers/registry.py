"""Model names -> builders with their published defaults. The one place where configurations live.

A name is ``{family}_{L}_{D}[_{variant}]``: ``spikformer_8_768`` (ImageNet), ``spikformer_4_384_cifar``,
``spikformer_2_256_dvs``. Any depth L and width D build; :func:`list_models` lists the published ones.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
    # (argument, problem) pairs of a full config that the builder's layout cannot take (divisibility), if any
    layout_check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None


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


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a model by name, e.g. ``create_model("spikformer_4_384_cifar", num_classes=100, T=2)``.

    Overrides are any builder argument (``num_classes``, ``img_size``, ``in_chans``, ``T``, ``attn``, ...), and
    ``neurons``: LIF settings per module name pattern, set after building (see :func:`set_lif_params`).
    ``model.default_cfg`` records the name and the full configuration so checkpoints can rebuild it.
    This builds with fresh weights; :func:`spikformers.create_model` (``factory.py``) also takes ``checkpoint_path``.
    """
    if pretrained:
        raise ValueError("spikformers ships no pretrained weights; load a checkpoint with `spikformers eval`")
    fam = parse_name(name)[0]
    cfg = model_config(name, **overrides)
    problems = config_problems(fam, cfg)
    if problems:
        raise ValueError("\n".join(f"create_model({name!r}): {problem}" for _, problem in problems))
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


def model_problems(name: str, **overrides: Any) -> list[tuple[str, str]]:
    """What is wrong with ``create_model(name, **overrides)``, found without building anything: a list of
    ``(argument, problem)`` pairs, empty when the model can be built. Raises ValueError for an unknown name."""
    fam = parse_name(name)[0]
    return config_problems(fam, model_config(name, **overrides))


_POSITIVE_INTS = ("T", "img_size", "in_chans", "num_classes", "depth", "dim")
_ATTN_OPTIONS = ("attn_kwargs", "attn_defaults", "attn_early_kwargs", "attn_last_kwargs")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def config_problems(fam: Family, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Range and layout checks of a full builder config (see :func:`model_problems`)."""
    problems = [(key, f"{key} must be an integer >= 1, got {cfg[key]!r}")
                for key in _POSITIVE_INTS if key in cfg and not (_is_int(cfg[key]) and cfg[key] >= 1)]
    heads = cfg.get("heads", 1)
    per_stage = isinstance(heads, (tuple, list)) and len(heads) > 0
    if not all(_is_int(h) and h >= 1 for h in (heads if per_stage else [heads])):
        problems.append(("heads", f"heads must be an integer >= 1 (or one per stage), got {heads!r}"))
    ratio = cfg.get("mlp_ratio", 1.0)
    if not (_is_real(ratio) and ratio > 0):
        problems.append(("mlp_ratio", f"mlp_ratio must be a number > 0, got {ratio!r}"))
    rate = cfg.get("drop_path_rate", 0.0)
    if not (_is_real(rate) and 0 <= rate < 1):
        problems.append(("drop_path_rate", f"drop_path_rate must be in [0, 1), got {rate!r}"))
    if "beta" in cfg and not (_is_real(cfg["beta"]) and 0 <= cfg["beta"] <= 1):
        problems.append(("beta", f"beta must be in [0, 1], got {cfg['beta']!r}"))
    for key in _ATTN_OPTIONS:
        opts = cfg.get(key) or {}
        if isinstance(opts, dict) and "attn_v_th" in opts and not (_is_real(opts["attn_v_th"])
                                                                  and opts["attn_v_th"] > 0):
            problems.append((key, f"{key}['attn_v_th'] (a firing threshold) must be > 0, got {opts['attn_v_th']!r}"))
    if not problems and fam.layout_check is not None:  # layout arithmetic needs valid integers
        problems += fam.layout_check(cfg)
    return problems


def _near(value: int, factor: int) -> str:
    """The multiples of ``factor`` nearest to ``value``, e.g. ``"28 or 32"``."""
    lo = value - value % factor
    return f"{lo} or {lo + factor}" if lo >= factor else f"{factor}"


def _divisors(n: int) -> str:
    found = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, found[:12])) + (", ..." if len(found) > 12 else "")


def _divisible(key: str, value: int, factor: int, why: str) -> list[tuple[str, str]]:
    if value % factor == 0:
        return []
    return [(key, f"{key} {value} is not divisible by {factor}, {why}; use a multiple of {factor}, "
                  f"e.g. {_near(value, factor)}")]


def _heads_divide(heads: int | tuple[int, ...], widths: list[int], what: str) -> list[tuple[str, str]]:
    if isinstance(heads, (tuple, list)):  # one count per stage: each divides its own stage's width
        return [("heads", f"heads[{i}]={h} does not divide stage width {w}; it must be one of {_divisors(w)}")
                for i, (h, w) in enumerate(zip(heads, widths)) if w % h]
    common = math.gcd(*widths)
    if common % heads == 0:
        return []
    return [("heads", f"heads={heads} does not divide {what}; heads must divide {common}: one of {_divisors(common)}")]


def _spikformer_layout(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Spikformer: SPS widths dim/8 ... dim, heads dividing dim, the image a multiple of the SPS pooling."""
    from .models.spikformer import SPS_POOLS

    sps = cfg.get("sps", "cifar")
    if sps not in SPS_POOLS:
        return [("sps", f"sps must be one of {sorted(SPS_POOLS)}, got {sps!r}")]
    dim, factor = cfg["dim"], 2 ** sum(SPS_POOLS[sps])
    problems = _divisible("dim", dim, 8, "as the patch splitting's widths are dim/8, dim/4, dim/2, dim")
    problems += _heads_divide(cfg["heads"], [dim], f"dim {dim}")
    problems += _divisible("img_size", cfg["img_size"], factor, f"the downsampling of the {sps} patch splitting")
    return problems


def _hst_layout(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """HST / SpiLiFormer: stem widths, heads dividing every stage width in use, the image a multiple of the
    stem's and the stage embeddings' pooling."""
    from .models.hst import EMBEDS, stage_depths

    embed = cfg.get("embed", "cifar")
    if embed not in EMBEDS:
        return [("embed", f"embed must be one of {sorted(EMBEDS)}, got {embed!r}")]
    spec = EMBEDS[embed]
    S, dim, depth = spec["stages"], cfg["dim"], cfg["depth"]
    unit = 2 ** (S - 1) * round(1 / min(spec["stem"]))
    problems = _divisible("dim", dim, unit, f"as the {embed} stages and stem are {unit}ths of dim")
    depths = cfg.get("depths")
    depths = tuple(depths) if depths is not None else stage_depths(embed, depth)
    if len(depths) != S or sum(depths) != depth or any(not _is_int(d) or d < 0 for d in depths):
        problems.append(("depths", f"depths {depths} must be {S} counts >= 0 summing to depth {depth}"))
    elif not problems:
        widths = [dim // 2 ** (S - 1 - i) for i in range(S)]
        heads = cfg["heads"]
        if isinstance(heads, (tuple, list)) and len(heads) != S:
            problems.append(("heads", f"heads {tuple(heads)} must be one count or {S} counts (one per stage)"))
        elif isinstance(heads, (tuple, list)):
            problems += _heads_divide(tuple(h for h, d in zip(heads, depths) if d > 0),
                                      [w for w, d in zip(widths, depths) if d > 0], "")
        else:
            used = [w for w, d in zip(widths, depths) if d > 0]
            problems += _heads_divide(heads, used, f"the stage widths {used} (dim {dim})")
    factor = 2 ** (sum(spec["stem_pools"]) + S - 1)
    problems += _divisible("img_size", cfg["img_size"], factor, f"the downsampling of the {embed} HST layout")
    return problems


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


# how timm's ``pretrained=True`` gets its weights: installed by the package above this floor (factory.py), which
# knows the checkpoint formats; the registry itself only builds
_pretrained_loader: Callable[..., nn.Module] | None = None


def set_pretrained_loader(loader: Callable[..., nn.Module] | None) -> None:
    """Install ``loader(name, pretrained_cfg, pretrained_cfg_overlay, **overrides) -> model`` for timm's
    ``pretrained=True``."""
    global _pretrained_loader
    _pretrained_loader = loader


def register_with_timm() -> None:
    """Register every published name with timm so that ``timm.create_model(name)`` works."""
    from timm.models import register_model

    for name in list_models():
        if name in _timm_done:
            continue

        def entry(pretrained: bool = False, _name: str = name, **kwargs: Any) -> nn.Module:
            timm_cfg = {key: kwargs.pop(key, None) for key in _TIMM_ONLY_KWARGS}  # timm's factory adds these
            if pretrained:  # weights where timm's pretrained config points (a Hub repo, a folder, a file)
                if _pretrained_loader is None:
                    raise ValueError(f"{_name}: no weight loader is installed (import spikformers first)")
                return _pretrained_loader(_name, timm_cfg["pretrained_cfg"], timm_cfg["pretrained_cfg_overlay"],
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
        description="Spikformer with SSA (Zhou et al., ICLR 2023)", layout_check=_spikformer_layout,
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
        layout_check=_spikformer_layout,
    )
)
register_family(
    Family(
        "est", _build_spikformer, SPIKFORMER_VARIANTS, _with_pairs({}),
        defaults={"attn": "psa"},
        description="Spikformer backbone with EST's partial-information attention PSA (arXiv 2210.01208)",
        layout_check=_spikformer_layout,
    )
)


def _sdt_variant(variant: Callable[[int, int], dict[str, Any]]) -> Callable[[int, int], dict[str, Any]]:
    """The Spike-driven Transformer (v1) as its official code builds it: Q/K/V convs without bias, its own patch
    splitting (real-valued embedding added to membranes) and a LIF before the head (docs/checkpoints.md)."""
    return lambda depth, dim: {**variant(depth, dim), "qkv_bias": False, "sps_form": "sdt", "head_neuron": True}


register_family(
    Family(
        "sdt", _build_spikformer, {k: _sdt_variant(f) for k, f in SPIKFORMER_VARIANTS.items()},
        _with_pairs({"cifar": [(2, 512)]}),
        defaults={"attn": "sdsa", "block": "membrane"},
        description="Spike-driven Transformer: SDSA with membrane shortcuts (Yao et al., NeurIPS 2023)",
        layout_check=_spikformer_layout,
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
        attention="ff_lidiff+fb_lidiff", layout_check=_hst_layout,
    )
)
register_family(
    Family(
        "qkformer", _build_hst, {k: _qkformer_variant(f) for k, f in SPILIFORMER_VARIANTS.items()},
        {"imagenet": [(10, 768)], "cifar": [(4, 384)]},
        description="QKFormer's hierarchical spiking transformer (token attention, SSA last stage), one pass",
        attention="qk_token+ssa", layout_check=_hst_layout,
    )
)
# end of SpiLiFormer presets

_install_timm_hook()
