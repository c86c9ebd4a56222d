"""Any checkpoint spikformers reads -> a spikformers model: :func:`import_checkpoint` / :func:`load_checkpoint`.

    >>> model = spikformers.create_model("spikformer_4_384_cifar", checkpoint_path="model_best.pth.tar")
    >>> imported = import_checkpoint("checkpoint-299.pth")      # also says what it mapped, ignored and assumed

Accepted: a spikformers run folder (``model.json`` + weights) or Hugging Face Hub folder (``config.json`` +
``model.safetensors``); a state dict in spikformers' own names; a spikingjelly 2.0 zoo state dict; a checkpoint of
the official Spikformer, QKFormer or Spike-driven Transformer code. Files are read without running code from them
(:mod:`spikformers.convert.files`); the layout is recognised from the keys (:mod:`spikformers.convert.layouts`).

Each architecture setting of the result comes from one place, recorded in :attr:`Imported.settings`: the layout's
code (the official SDT embedding, ...), the weights themselves (classes, input channels, MLP width, biases, stage
depths), the ``args`` the training script saved beside them, the published configuration of that code, the given
overrides, or the registry's default for the model name. A given override that contradicts the code or the weights
is refused; one the checkpoint cannot tell (``T``, ``heads``, ``img_size``) wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import create_model, model_config, model_name, parse_name
from ..train.checkpoint import CheckpointError, check_state_dict
from . import layouts as L
from .files import CheckpointFile, read_checkpoint
from .keymap import ConversionError, KeyMap, fill_state_dict, fold, summarize

# settings a state dict does not store: reported with where their value came from
UNSTORED = ("T", "heads", "img_size")
_DEFAULT = "registry default (not stored in the checkpoint; override if the network used another)"


@dataclass
class Imported:
    """What :func:`import_checkpoint` built and how.

    ``model``: the spikformers model (``default_cfg`` rebuilds it); ``name``: its registry name; ``source`` /
    ``code``: the layout (``--source`` name) and the code base it comes from; ``keys`` / ``ignored``: the key map
    and the source keys left out with the reason; ``settings``: builder override -> (value, where it came from);
    ``notes``: how the file was read.
    """

    model: nn.Module
    name: str
    source: str
    code: str
    keys: list[KeyMap] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    settings: dict[str, tuple[Any, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """What was read, mapped, ignored and assumed, as lines to print."""
        lines = [f"layout: {self.code} ({self.source})", f"model: {self.name}"]
        width = min(max((len(f"{k} = {_show(v)}") for k, (v, _) in self.settings.items()), default=0), 40)
        lines += [f"  {f'{k} = {_show(v)}':{width}s}  {why}" for k, (v, why) in self.settings.items()]
        if self.keys:
            squeezed = sum(k.squeeze for k in self.keys)
            lines.append(f"mapped {len({k.source for k in self.keys})} tensors of the checkpoint to {len(self.keys)} "
                         f"of the model ({squeezed} reshaped from a 1x1 convolution to a linear):")
            lines += [f"  {line}" for line in summarize(self.keys)]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} tensors:")
            by_reason: dict[str, list[str]] = {}
            for key, why in self.ignored.items():
                by_reason.setdefault(why, []).append(key)
            lines += [f"  {', '.join(dict.fromkeys(map(fold, keys)))}: {why}" for why, keys in by_reason.items()]
        elif self.keys:
            lines.append("ignored 0 tensors")
        return lines


def _show(value: Any, limit: int = 100) -> str:
    """A setting's value for the report: JSON for containers, a long one cut with its entry count."""
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(value)} entries)"


def load_checkpoint(path: str | Path, name: str | None = None, source: str = "auto", **overrides: Any) -> nn.Module:
    """The spikformers model of a checkpoint in any supported format; see :func:`import_checkpoint`."""
    return import_checkpoint(path, name, source, **overrides).model


def import_checkpoint(path: str | Path, name: str | None = None, source: str = "auto", ema: bool = False,
                      which: str = "last", **overrides: Any) -> Imported:
    """Build the spikformers model a checkpoint holds and load its weights, strictly.

    Args:
        path: a run folder, a Hub folder, a ``.safetensors`` file, or a ``torch.save`` file (``.pth``,
            ``.pth.tar``, ...) holding a state dict directly or under ``state_dict`` / ``model`` / ... .
        name: the registry name to build (checked against the weights); may be left out where the checkpoint
            tells it (a run or Hub folder; an official layout whose variant its code fixes).
        source: ``"auto"`` or a layout name of :data:`~spikformers.convert.layouts.SOURCES` (checked).
        ema: take the averaged weights of a file that holds both. which: ``last`` or ``best`` of a run folder.
        overrides: builder overrides (``T``, ``heads``, ``img_size``, ``drop_path_rate``, ...).

    Raises :class:`~spikformers.train.checkpoint.CheckpointError` for a file that cannot be read (or would run
    code), :class:`~spikformers.convert.ConversionError` for weights that do not fit, both naming what is wrong.
    """
    path = Path(path)
    if path.is_dir() or (path.suffix == ".safetensors" and any((path.parent / f).is_file()
                                                               for f in ("model.json", "config.json"))):
        return _from_spikformers_folder(path, name, which, overrides)
    ckpt = read_checkpoint(path, ema)
    layout = L.detect(ckpt.state, source)
    if layout.source == "spikformers":
        imported = _from_own_names(ckpt, name, overrides)
    elif layout.source == "spikingjelly":
        imported = _from_spikingjelly(ckpt, layout, name, overrides)
    else:
        imported = _from_official(ckpt, layout, name, overrides)
    imported.notes = [f"read {path}: " + "; ".join(ckpt.notes) + f" ({len(ckpt.state)} tensors)"]
    _add_defaults(imported)
    imported.model.train()
    return imported


# ---------------------------------------------------------------------------------------------------------
# spikformers' own formats


def _from_spikformers_folder(path: Path, name: str | None, which: str, overrides: dict[str, Any]) -> Imported:
    from ..train.checkpoint import load_model

    folder = path if path.is_dir() else path.parent
    if (folder / "model.json").is_file():
        model = load_model(path, which=which, **overrides)  # checks model.json and every key and shape
        _check_same_name(name, model.default_cfg["architecture"], folder / "model.json")
        code = "spikformers run folder"
        settings = {k: (v, "model.json") for k, v in model.default_cfg["overrides"].items() if k not in overrides}
    elif (folder / "config.json").is_file():
        from .hub import load_hub_folder, read_hub_config

        arch, model_args = read_hub_config(folder)
        _check_same_name(name, arch, folder / "config.json")
        model = load_hub_folder(folder, **overrides)
        code = "Hugging Face Hub folder"
        settings = {k: (v, "config.json") for k, v in model_args.items()}
    else:
        raise CheckpointError(f"{folder}: neither a run folder (model.json) nor a Hub folder (config.json)")
    settings.update({k: (v, "given") for k, v in overrides.items()})
    imported = Imported(model, model.default_cfg["architecture"], "spikformers", code, settings=settings,
                        notes=[f"read {path}"])
    _add_defaults(imported)
    return imported


def _check_same_name(name: str | None, saved: Any, where: Path) -> None:
    if name is not None and name != saved:
        raise ConversionError(f"{where} builds {saved}, not {name}; leave the model name out or give {saved}")


def _from_own_names(ckpt: CheckpointFile, name: str | None, overrides: dict[str, Any]) -> Imported:
    if name is None:
        raise ConversionError(f"{ckpt.path}: a state dict in spikformers' names records no architecture; name the "
                              "model (--model NAME, or save a run folder with model.json beside the weights)")
    model = create_model(name, **overrides)
    check_state_dict(model, ckpt.state, str(ckpt.path))
    model.load_state_dict(ckpt.state)
    return Imported(model, name, "spikformers", "spikformers", settings={k: (v, "given") for k, v in overrides.items()})


# ---------------------------------------------------------------------------------------------------------
# official code bases: rename keys by the layout's rules, read the architecture off the shapes


def _from_official(ckpt: CheckpointFile, layout: L.Layout, name: str | None, given: dict[str, Any]) -> Imported:
    keys, ignored = layout.key_map(list(ckpt.state))
    shapes = {km.target: tuple(km.apply(ckpt.state[km.source]).shape) for km in keys}
    arch = L.read_architecture(layout.family, shapes)
    if layout.source == "sdt-official" and arch["mlp_ratio"] == 1.0:
        raise ConversionError(f"{ckpt.path}: the official SDT MLP adds an inner residual when its hidden width "
                              "equals the width (mlp_ratio 1); spikformers does not build it")
    variant = _variant(layout, ckpt.args)
    name, variant = _name(layout, name, variant, arch, ckpt.path)
    fixed = {k: (v, f"{layout.source} code") for k, v in layout.options.items()}
    fixed.update({k: (v, "weights") for k, v in _weight_overrides(layout.family, arch).items()})
    settings = _resolve(fixed, _unstored(layout, variant, arch, ckpt.args), given)
    model = create_model(name, **{k: v for k, (v, _) in settings.items()})
    try:
        fill_state_dict(keys, ignored, ckpt.state, model, str(ckpt.path))
    except ConversionError as e:
        raise ConversionError(f"{ckpt.path} does not fit {name} ({layout.code}; keys in spikformers' names are "
                              f"targets): {e}") from None
    return Imported(model, name, layout.source, layout.code, keys, ignored, settings)


def _variant(layout: L.Layout, args: dict[str, Any] | None) -> str | None:
    """The registry variant the layout fixes, or that the training args name (SDT's ``pooling_stat``); SDT args
    with a network spikformers does not build are refused here."""
    if layout.source != "sdt-official" or not args:
        return layout.variant
    if args.get("spike_mode", "lif") != "lif":
        raise ConversionError(f"checkpoint args spike_mode={args['spike_mode']!r}: only LIF neurons convert")
    if args.get("dvs_mode"):
        raise ConversionError("checkpoint args dvs_mode=True: the DVS attention's erosion pooling (Erode) of "
                              "keys, values and outputs is not built in spikformers")
    pools = {"0011": "cifar", "1111": "imagenet"}
    stat = args.get("pooling_stat")
    if stat is not None and stat not in pools:
        raise ConversionError(f"checkpoint args pooling_stat={stat!r}: spikformers builds '0011' and '1111'")
    return pools.get(stat)


def _name(layout: L.Layout, name: str | None, variant: str | None, arch: dict[str, Any],
          where: Path) -> tuple[str, str]:
    """The model name to build: the given one, checked against the layout and the weights, or the one they tell."""
    depth, dim = arch["depth"], arch["dim"]
    if name is None:
        if variant is None:
            options = " or ".join(model_name(layout.family, depth, dim, v) for v in ("cifar", "imagenet"))
            raise ConversionError(f"{where}: the stem's pooling is not stored in the weights of {layout.code}; "
                                  f"name the model: {options}")
        return model_name(layout.family, depth, dim, variant), variant
    fam, n_depth, n_dim, n_variant = parse_name(name)
    right = model_name(layout.family, depth, dim, variant or n_variant)
    if fam.name != layout.family or (n_depth, n_dim) != (depth, dim) or variant not in (None, n_variant):
        raise ConversionError(f"{where} holds a {depth}-block, {dim}-wide network of {layout.code}, which is "
                              f"{right}, not {name}")
    return name, n_variant


def _weight_overrides(family: str, arch: dict[str, Any]) -> dict[str, Any]:
    """The builder overrides that the weights fix (shapes and the presence of biases)."""
    out: dict[str, Any] = {k: arch[k] for k in ("num_classes", "in_chans", "mlp_ratio")}
    if family == "qkformer":
        out["depths"] = arch["depths"]
        if arch["conv_bias"]:
            out["conv_bias"] = True
        early: dict[str, Any] = {"q_split": False}  # QKFormer's token attention
        last: dict[str, Any] = {}
        if not arch["proj_bias"]:
            early["proj_bias"] = last["proj_bias"] = False
        if arch["qkv_bias"]:
            last["qkv_bias"] = True
        if len(early) > 1:
            out["attn_early_kwargs"] = early
        if last:
            out["attn_last_kwargs"] = last
        return out
    out["qkv_bias"] = arch["qkv_bias"]
    if not arch["mlp_bias"]:
        out["mlp_bias"] = False
    if arch["sps_bias"]:
        out["sps_bias"] = True
    if not arch["proj_bias"]:  # only when off: not every attention takes the option
        out["attn_kwargs"] = {"proj_bias": False}
    return out


def _arg(args: dict[str, Any] | None, *names: str) -> tuple[int, str] | None:
    """The first positive integer among ``args[name]``, with its name."""
    for n in names:
        v = (args or {}).get(n)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, n
    return None


def _unstored(layout: L.Layout, variant: str, arch: dict[str, Any], args: dict[str, Any] | None
              ) -> dict[str, tuple[Any, str]]:
    """Values for settings the weights do not store: the training script's args, else the code's published
    configuration (where it differs from the registry default of the name)."""
    out: dict[str, tuple[Any, str]] = {}
    dim = arch["dim"]
    if (layout.source, variant) == ("qkformer-official", "cifar"):
        out["heads"] = (8, "official code: cifar10/model.py fixes num_heads = [8, 8, 8]")
    elif layout.source == "qkformer-official" and dim % 64 == 0:
        out["heads"] = (dim // 64, "official code: the QKFormer_10_384/512/768 factories use dim / 64 heads")
    elif layout.source == "sdt-official":
        out["heads"] = (8, "official code: train.py default --num-heads 8")
    heads_arg = () if (layout.source, variant) == ("qkformer-official", "cifar") else ("num_heads",)  # ignored there
    for key, names in (("T", ("time_step", "time_steps", "T")), ("heads", heads_arg), ("img_size", ("img_size",
                                                                                                   "input_size"))):
        found = _arg(args, *names)
        if found:
            out[key] = (found[0], f"checkpoint args.{found[1]}")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (a tuple and a list of the same numbers are the same setting)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _resolve(fixed: dict[str, tuple[Any, str]], unstored: dict[str, tuple[Any, str]], given: dict[str, Any]
             ) -> dict[str, tuple[Any, str]]:
    """Settings with their origin: what the code and the weights fix (a given override may only agree), then the
    unstored ones, then the given overrides."""
    out = dict(fixed)
    for key, value in given.items():
        if key in fixed and not _same(value, fixed[key][0]):
            raise ConversionError(f"override {key}={_show(value)} contradicts the checkpoint: {fixed[key][1]} "
                                  f"give {key}={_show(fixed[key][0])}")
    out.update(unstored)
    out.update({k: (v, "given") for k, v in given.items() if k not in fixed})
    return out


def _add_defaults(imported: Imported) -> None:
    """Report the unstored settings the registry default decided, so that nobody mistakes them for read."""
    cfg = imported.model.default_cfg["config"]
    for key in UNSTORED:
        if key not in imported.settings and key in cfg:
            imported.settings[key] = (cfg[key], _DEFAULT)


# ---------------------------------------------------------------------------------------------------------
# spikingjelly 2.0 zoo state dicts: build spikingjelly's network, load the file into it, convert the network

# published factories: (family, depth, dim, variant) -> (factory, heads); other settings match the registry's
SJ_FACTORIES = {
    ("spikformer", 4, 256, "imagenet"): ("spikformer_ti", 8),
    ("spikformer", 6, 384, "imagenet"): ("spikformer_s", 12),
    ("spikformer", 4, 384, "cifar"): ("spikformer_cifar10", 12),
    ("qkformer", 10, 384, "imagenet"): ("qkformer_10_384", (6, 6, 6)),
    ("sdt", 8, 384, "imagenet"): ("sdt_8_384", 8),
}
# builder overrides a spikingjelly network is built from; the others are applied to the converted model
SJ_ARGS = ("T", "heads", "img_size", "num_classes", "in_chans", "mlp_ratio", "depths")


def _sj_architecture(family: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """depth, dim, classes, input channels, MLP ratio (and stage depths) of a spikingjelly zoo state dict."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ConversionError(f"expected a tensor {key} in a spikingjelly {family} state dict; found none")
        return shapes[key]

    num_classes, dim = shape("head.weight")
    out: dict[str, Any] = {"dim": dim, "num_classes": num_classes}
    if family == "qkformer":
        depths = tuple(L.blocks_per_stage(shapes, f"stage{s}") for s in (1, 2, 3))
        out.update(depth=sum(depths), depths=depths, in_chans=shape("patch_embed1.conv1.weight")[1],
                   mlp_ratio=shape("stage3.0.mlp.fc1.weight")[0] / dim)
        return out
    first = "patch_embed.stages.0.conv_bn.block.0.weight" if family == "spikformer" else "patch_embed.stages.0.0.weight"
    fc1 = "blocks.0.mlp.fc1.0.weight" if family == "spikformer" else "blocks.0.mlp.fc1.weight"
    out.update(depth=L.blocks_per_stage(shapes, "blocks"), in_chans=shape(first)[1], mlp_ratio=shape(fc1)[0] / dim)
    return out


def _sj_network(family: str, variant: str, cfg: dict[str, Any]) -> nn.Module:
    """spikingjelly's zoo network of a configuration (its default neurons)."""
    try:
        from spikingjelly.activation_based.model import qkformer, spike_driven_transformer, spikformer
    except ImportError as e:
        raise ConversionError(f"a spikingjelly state dict needs spikingjelly 2.0 (pip install spikingjelly==2.0.0): "
                              f"{e}") from None
    common = dict(T=cfg["T"], in_channels=cfg["in_chans"], num_classes=cfg["num_classes"], embed_dims=cfg["dim"],
                  mlp_ratio=cfg["mlp_ratio"])
    if family == "spikformer":
        return spikformer.Spikformer(**common, img_size_h=cfg["img_size"], img_size_w=cfg["img_size"],
                                     patch_size=4 if variant == "cifar" else 16, num_heads=cfg["heads"],
                                     depths=cfg["depth"])
    heads = cfg["heads"]
    if family == "qkformer":
        return qkformer.QKFormer(**common, num_heads=(heads,) * 3 if isinstance(heads, int) else tuple(heads),
                                 depths=tuple(cfg["depths"]))
    return spike_driven_transformer.SpikeDrivenTransformer(**common, num_heads=heads, depths=cfg["depth"],
                                                           pooling_stat="0011" if variant == "cifar" else "1111")


def _from_spikingjelly(ckpt: CheckpointFile, layout: L.Layout, name: str | None, given: dict[str, Any]) -> Imported:
    from .spikingjelly import convert_spikingjelly

    arch = _sj_architecture(layout.family, ckpt.state)
    name, variant = _name(layout, name, layout.variant, arch, ckpt.path)
    fixed = {k: (arch[k], "weights") for k in ("num_classes", "in_chans", "mlp_ratio", "depths") if k in arch}
    unstored: dict[str, tuple[Any, str]] = {}
    factory = SJ_FACTORIES.get((layout.family, arch["depth"], arch["dim"], variant))
    if factory:
        unstored["heads"] = (factory[1], f"spikingjelly's {factory[0]}")
    network_args = _resolve(fixed, unstored, {k: v for k, v in given.items() if k in SJ_ARGS})
    cfg = model_config(name, **{k: v for k, (v, _) in network_args.items()})
    network = _sj_network(layout.family, variant, cfg)
    check_state_dict(network, ckpt.state, str(ckpt.path))
    network.load_state_dict(ckpt.state)
    conversion = convert_spikingjelly(network.eval(), img_size=cfg["img_size"])
    model = conversion.model
    converted = model.default_cfg["overrides"]
    settings = {k: network_args[k] if k in network_args else (v, _DEFAULT if k in UNSTORED else "spikingjelly network")
                for k, v in converted.items()}
    extra = {k: v for k, v in given.items() if k not in SJ_ARGS}
    for key, value in extra.items():
        if key in converted and not _same(value, converted[key]):
            raise ConversionError(f"override {key}={_show(value)} contradicts the checkpoint: spikingjelly's network "
                                  f"has {key}={_show(converted[key])}")
    if extra:  # options the spikingjelly network has no say in (drop_path_rate, ...): rebuild and reload
        settings.update({k: (v, "given") for k, v in extra.items()})
        rebuilt = create_model(name, **{**converted, **extra})
        check_state_dict(rebuilt, model.state_dict(), "the converted network")
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return Imported(model, name, layout.source, layout.code, conversion.keys, conversion.ignored, settings)
