"""spikingjelly's model zoo -> spikformers: read the architecture off the module, build ours, copy every tensor.

    >>> from spikingjelly.activation_based.model import spikformer
    >>> sj = spikformer.spikformer_cifar10()
    >>> sj.load_state_dict(torch.load("spikformer_cifar10.pth"))
    >>> model = spikformers.from_spikingjelly(sj)          # same logits, same spikes, same gradients

Supported (spikingjelly 2.0): ``spikingjelly.activation_based.model.spikformer.Spikformer`` (``spikformer_ti``,
``spikformer_s``, ``spikformer_cifar10``), ``...model.qkformer.QKFormer`` (``qkformer_10_384``) and
``...model.spike_driven_transformer.SpikeDrivenTransformer`` (``sdt_8_384``).

Every architectural choice (depth, width, heads, stem pooling, biases, T, classes, attention scale, each LIF's
tau / threshold / reset / surrogate) is read from the module's children and attributes; where spikingjelly's
network differs from the official code (our defaults), the builder option that reproduces it is set. The tensors
go through an explicit key map: every source key is used (or named in ``Conversion.ignored`` with the reason),
every target key is filled exactly once, shapes must agree, and a 1x1 convolution becomes a Linear explicitly.
Anything without an exact equivalent raises :class:`ConversionError`; nothing is approximated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..neurons import LIF, Neuron
from ..registry import create_model
from .keymap import ConversionError, KeyMap, fill_state_dict

SUPPORTED = ("spikingjelly.activation_based.model: spikformer.Spikformer, qkformer.QKFormer, "
             "spike_driven_transformer.SpikeDrivenTransformer")


@dataclass
class Conversion:
    """What :func:`convert_spikingjelly` did.

    ``source``: the spikingjelly module; ``model``: ours; ``keys``: the key map; ``ignored``: source keys left out
    and why; ``neurons``: (source, target) neuron module names, a fused Q/K/V neuron mapping to several targets;
    ``points``: (source, target) module names whose outputs are the same spike tensors, in forward order (patch
    embeddings and blocks; for SDT, whose residual stream is real-valued, the LIFs at the embedding, at each
    block's input and before the head); ``per_step_output``: the source returns ``[T, B, K]`` logits, ours their
    mean over T.
    """

    source: nn.Module
    model: nn.Module
    keys: list[KeyMap]
    ignored: dict[str, str]
    neurons: list[tuple[str, str]]
    points: list[tuple[str, str]]
    per_step_output: bool = False


@dataclass
class _Plan:
    """The maps, filled while the architecture is read."""

    src: nn.Module
    keys: list[KeyMap] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    neurons: list[tuple[str, str]] = field(default_factory=list)
    points: list[tuple[str, str]] = field(default_factory=list)

    def module(self, path: str) -> nn.Module:
        """The source submodule at ``path``."""
        return self.src.get_submodule(path)

    def linear(self, src: str, dst: str, part: tuple[int, int] = (0, 1), squeeze: bool = False) -> None:
        """Weight and, when the source has one, bias of a conv or linear."""
        self.keys.append(KeyMap(f"{src}.weight", f"{dst}.weight", part, squeeze))
        if getattr(self.module(src), "bias", None) is not None:
            self.keys.append(KeyMap(f"{src}.bias", f"{dst}.bias", part))

    def norm(self, src: str, dst: str, part: tuple[int, int] = (0, 1)) -> None:
        """Affine parameters and running statistics of a batch norm."""
        _check_norm(self.module(src), src)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            self.keys.append(KeyMap(f"{src}.{name}", f"{dst}.{name}", part))

    def neuron(self, src: str, *dsts: str) -> None:
        """A source neuron and the target neuron(s) it stands for."""
        _lif_settings(self.module(src), src)  # raises for a neuron we cannot reproduce
        self.neurons += [(src, d) for d in dsts]


# ---------------------------------------------------------------------------------------------------------
# checks of single source modules


def _check_norm(bn: nn.Module, path: str) -> None:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise ConversionError(f"{path}: expected a batch norm, found {type(bn).__name__}")
    if not (bn.affine and bn.track_running_stats) or bn.eps != 1e-5 or bn.momentum != 0.1:
        raise ConversionError(
            f"{path}: batch norm with affine={bn.affine}, track_running_stats={bn.track_running_stats}, "
            f"eps={bn.eps}, momentum={bn.momentum}; spikformers' norms are affine, tracked, eps 1e-5, momentum 0.1"
        )


def _check_conv(m: nn.Module, path: str, kind: type[nn.Module], kernel: int, stride: int, padding: int) -> None:
    """A plain conv of the given kernel, stride and zero padding (anything else has no equivalent here)."""
    if not isinstance(m, kind):
        raise ConversionError(f"{path}: expected {kind.__name__}, found {type(m).__name__}")
    nd = 1 if kind is nn.Conv1d else 2
    want = ((kernel,) * nd, (stride,) * nd, (padding,) * nd, (1,) * nd, 1, "zeros")
    got = (m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode)
    if got != want:
        raise ConversionError(
            f"{path}: expected kernel, stride, padding, dilation, groups, padding mode {want}, found {got}"
        )


def _check_pool(layers: list[nn.Module], path: str) -> bool:
    """Whether ``layers`` (what follows a conv and its norm) is one MaxPool(3, stride 2, padding 1) or nothing."""
    if not layers:
        return False
    m = layers[0]
    if len(layers) != 1 or not isinstance(m, nn.MaxPool2d):
        raise ConversionError(f"{path}: expected nothing or MaxPool2d(3, stride=2, padding=1), found {layers}")
    got = tuple(_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation)) + (m.ceil_mode,)
    if got != ((3, 3), (2, 2), (1, 1), (1, 1), False):
        raise ConversionError(f"{path}: expected nothing or MaxPool2d(3, stride=2, padding=1), found {layers}")
    return True


def _lif_settings(node: nn.Module, path: str) -> dict[str, Any]:
    """A spikingjelly LIF node's settings in our LIF's names, or a ConversionError for any other neuron."""
    from spikingjelly.activation_based import neuron, surrogate

    if type(node) is not neuron.LIFNode:
        raise ConversionError(f"{path}: {type(node).__name__} has no spikformers equivalent; only LIFNode converts")
    sg = node.surrogate_function
    problems = []
    if not node.decay_input:
        problems.append("decay_input=False (ours decays the input)")
    if node.v_reset is None:
        problems.append("soft reset v_reset=None (ours resets hard)")
    if type(sg) is not surrogate.Sigmoid or not sg.spiking:
        problems.append(f"surrogate {sg!r} (ours is the spiking sigmoid surrogate)")
    if getattr(node, "_neuron_precision", None) is not None:
        problems.append(f"reduced neuron precision {node._neuron_precision}")
    if problems:
        raise ConversionError(f"{path}: LIFNode with " + "; ".join(problems))
    return {"tau": float(node.tau), "v_th": float(node.v_threshold), "v_reset": float(node.v_reset),
            "alpha": float(sg.alpha), "detach_reset": bool(node.detach_reset)}


def _same(values: list[Any], what: str) -> Any:
    """The one value every block agrees on, or an error (our builders set these per model, not per block)."""
    if any(v != values[0] for v in values):
        raise ConversionError(f"{what} differs between blocks ({values}); spikformers sets it for the whole model")
    return values[0]


# ---------------------------------------------------------------------------------------------------------
# attention and MLP, shared by Spikformer and QKFormer


def _fused_attention(plan: _Plan, a: nn.Module, src: str, dst: str, dim: int, fused: str, lif: str,
                     names: str) -> dict[str, Any]:
    """The parts spikingjelly's SSA and token QK attention share: one fused 1x1 projection (``fused``, rows in the
    order of ``names``) split into our per-name linear + BN units whose neurons are ``lif``, the attention LIF and
    the output projection; returns the settings read from them."""
    proj = "proj_conv_bn"
    fused_seq, proj_seq = getattr(a, fused), getattr(a, proj)
    if len(fused_seq) != 2 or len(proj_seq) != 2:
        raise ConversionError(f"{src}: expected Conv1d + BatchNorm1d in {fused} and {proj}")
    _check_conv(fused_seq[0], f"{src}.{fused}.0", nn.Conv1d, 1, 1, 0)
    _check_conv(proj_seq[0], f"{src}.{proj}.0", nn.Conv1d, 1, 1, 0)
    n = len(names)
    if fused_seq[0].out_channels != n * dim:
        parts = ", ".join(names.upper())
        raise ConversionError(f"{src}.{fused}.0: expected {n * dim} outputs ({parts} of {dim})")
    for i, name in enumerate(names):  # the fused projection's rows: one block per name, in order
        plan.linear(f"{src}.{fused}.0", f"{dst}.{name}.linear", part=(i, n), squeeze=True)
        plan.norm(f"{src}.{fused}.1", f"{dst}.{name}.bn", part=(i, n))
    plan.neuron(f"{src}.{lif}", *(f"{dst}.{name}.neuron" for name in names))
    plan.neuron(f"{src}.attn_lif", f"{dst}.attn_neuron")
    plan.linear(f"{src}.{proj}.0", f"{dst}.proj.linear", squeeze=True)
    plan.norm(f"{src}.{proj}.1", f"{dst}.proj.bn")
    plan.neuron(f"{src}.proj_lif", f"{dst}.proj.neuron")
    return {"heads": a.num_heads, "attn_v_th": float(a.attn_lif.v_threshold),
            "qkv_bias": fused_seq[0].bias is not None, "proj_bias": proj_seq[0].bias is not None}


def _ssa(plan: _Plan, src: str, dst: str, dim: int) -> dict[str, Any]:
    """spikingjelly's SpikingSelfAttention -> our SSA; returns its settings."""
    from spikingjelly.activation_based.layer.attention import SpikingSelfAttention

    a = plan.module(src)
    if type(a) is not SpikingSelfAttention:
        raise ConversionError(f"{src}: expected SpikingSelfAttention, found {type(a).__name__}")
    settings = _fused_attention(plan, a, src, dst, dim, "qkv_conv_bn", "qkv_lif", "qkv")
    return {**settings, "scale": float(a.scale)}


def _token_qk(plan: _Plan, src: str, dst: str, dim: int) -> dict[str, Any]:
    """spikingjelly's token QKAttention -> our FF-LiDiff with ``q_split=False`` (QKFormer token attention)."""
    from spikingjelly.activation_based.layer.attention import QKAttention

    a = plan.module(src)
    if not isinstance(a, QKAttention):
        raise ConversionError(f"{src}: expected QKAttention, found {type(a).__name__}")
    if a.qka_type != "token":
        raise ConversionError(f"{src}: QKAttention qka_type={a.qka_type!r}; spikformers has the token form only")
    return _fused_attention(plan, a, src, dst, dim, "qk_conv_bn", "qk_lif", "qk")


def _mlp(plan: _Plan, src: str, dst: str, names: tuple[str, ...]) -> tuple[int, bool]:
    """A two-layer spiking MLP (``names``: fc1, bn1, lif1, fc2, bn2, lif2 source paths relative to ``src``) ->
    our MLP; returns (hidden width, biases on)."""
    fc1, bn1, lif1, fc2, bn2, lif2 = (f"{src}.{n}" for n in names)
    for path in (fc1, fc2):
        _check_conv(plan.module(path), path, nn.Conv1d, 1, 1, 0)
    biases = {plan.module(p).bias is not None for p in (fc1, fc2)}
    if len(biases) != 1:
        raise ConversionError(f"{src}: one MLP projection has a bias and the other not; ours has both or neither")
    for i, (fc, bn, lif) in enumerate(((fc1, bn1, lif1), (fc2, bn2, lif2)), 1):
        plan.linear(fc, f"{dst}.fc{i}.linear", squeeze=True)
        plan.norm(bn, f"{dst}.fc{i}.bn")
        plan.neuron(lif, f"{dst}.fc{i}.neuron")
    return plan.module(fc1).out_channels, biases.pop()


def _mlp_ratio(hidden: int, dim: int, where: str) -> float:
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ConversionError(f"{where}: MLP hidden width {hidden} is not int({dim} * ratio) for any ratio")
    return ratio


# ---------------------------------------------------------------------------------------------------------
# Spikformer


def _spikformer(plan: _Plan, img_size: int | None) -> tuple[str, dict[str, Any]]:
    src = plan.src
    stem = src.patch_embed
    stages = list(stem.stages)
    if len(stages) != 4:
        raise ConversionError(f"patch_embed.stages: our SPS has 4 conv stages, found {len(stages)}")
    pools, widths = [], []
    for i, stage in enumerate(stages):
        path = f"patch_embed.stages.{i}"
        layers = list(stage.conv_bn.block)
        _check_conv(layers[0], f"{path}.conv_bn.block.0", nn.Conv2d, 3, 1, 1)
        pools.append(_check_pool(layers[2:], f"{path}.conv_bn.block"))
        widths.append(layers[0].out_channels)
        plan.linear(f"{path}.conv_bn.block.0", f"embed.stages.{i}.conv.conv")
        plan.norm(f"{path}.conv_bn.block.1", f"embed.stages.{i}.conv.bn")
        plan.neuron(f"{path}.neuron", f"embed.stages.{i}.neuron")
    dim = widths[-1]
    if widths != [dim // 8, dim // 4, dim // 2, dim]:
        raise ConversionError(f"patch_embed.stages: widths {widths}; our SPS has D/8, D/4, D/2, D")
    variants = {(False, False, True, True): "cifar", (True, True, True, True): "imagenet"}
    if tuple(pools) not in variants:
        raise ConversionError(f"patch_embed.stages: pools after stages {pools}; ours pool the last 2 or all 4")
    rpe = "patch_embed.positional_encoding"
    layers = list(stem.positional_encoding.conv_bn.block)
    _check_conv(layers[0], f"{rpe}.conv_bn.block.0", nn.Conv2d, 3, 1, 1)
    if _check_pool(layers[2:], f"{rpe}.conv_bn.block"):
        raise ConversionError(f"{rpe}: a pooled position embedding has no equivalent in our SPS")
    plan.linear(f"{rpe}.conv_bn.block.0", "embed.rpe.conv")
    plan.norm(f"{rpe}.conv_bn.block.1", "embed.rpe.bn")
    plan.neuron(f"{rpe}.neuron", "embed.rpe_neuron")
    plan.points.append(("patch_embed", "embed"))

    attn, mlp = [], []
    for j in range(len(src.blocks)):
        attn.append(_ssa(plan, f"blocks.{j}.attn", f"blocks.{j}.attn", dim))
        mlp.append(_mlp(plan, f"blocks.{j}.mlp", f"blocks.{j}.mlp", ("fc1.0", "fc1.1", "neuron1",
                                                                     "fc2.0", "fc2.1", "neuron2")))
        plan.points.append((f"blocks.{j}", f"blocks.{j}"))
    if not attn:
        raise ConversionError("blocks: a Spikformer without blocks has no equivalent")
    settings = {k: _same([a[k] for a in attn], f"attention {k}") for k in attn[0]}
    hidden, mlp_bias = _same(mlp, "MLP (hidden width, bias)")
    plan.linear("head", "head")

    h, w = stem.image_size
    if img_size is None and h != w:
        raise ConversionError(f"patch_embed.image_size is {h} x {w}; spikformers models take square images "
                              "(pass img_size= to convert for another size; the network itself takes any)")
    variant = variants[tuple(pools)]
    name = f"spikformer_{len(src.blocks)}_{dim}" + ("_cifar" if variant == "cifar" else "")
    overrides = dict(
        img_size=img_size or h, in_chans=stages[0].conv_bn.block[0].in_channels, num_classes=src.head.out_features,
        T=int(src.T), heads=settings["heads"], mlp_ratio=_mlp_ratio(hidden, dim, "blocks.0.mlp"),
        qkv_bias=settings["qkv_bias"], mlp_bias=mlp_bias,
        sps_pool="membrane",  # spikingjelly pools the norm's output inside conv_bn, before the neuron
        attn_kwargs={"proj_bias": settings["proj_bias"], "scale": settings["scale"],
                     "attn_v_th": settings["attn_v_th"]},
    )
    return name, overrides


# ---------------------------------------------------------------------------------------------------------
# QKFormer


def _qk_embed(plan: _Plan, src: str, dst: str, convs: list[tuple[str, str, str | None, str]]) -> set[bool]:
    """A QKFormer patch embedding: ``convs`` = (conv, norm, pool or None, neuron) source names in order, then
    the 1x1 stride-2 shortcut. Returns the set of conv bias presences seen."""
    biases = set()
    for i, (conv, bn, pool, lif) in enumerate(convs):
        _check_conv(plan.module(f"{src}.{conv}"), f"{src}.{conv}", nn.Conv2d, 3, 1, 1)
        if pool is not None:
            _check_pool([plan.module(f"{src}.{pool}")], f"{src}.{pool}")
        biases.add(plan.module(f"{src}.{conv}").bias is not None)
        plan.linear(f"{src}.{conv}", f"{dst}.convs.{i}.conv.conv")
        plan.norm(f"{src}.{bn}", f"{dst}.convs.{i}.conv.bn")
        plan.neuron(f"{src}.{lif}", f"{dst}.convs.{i}.neuron")
    shortcut = plan.module(f"{src}.shortcut")
    if len(shortcut) != 3:
        raise ConversionError(f"{src}.shortcut: expected Conv2d, BatchNorm2d, neuron; found {len(shortcut)} modules")
    _check_conv(shortcut[0], f"{src}.shortcut.0", nn.Conv2d, 1, 2, 0)
    biases.add(shortcut[0].bias is not None)
    plan.linear(f"{src}.shortcut.0", f"{dst}.shortcut.conv.conv")
    plan.norm(f"{src}.shortcut.1", f"{dst}.shortcut.conv.bn")
    plan.neuron(f"{src}.shortcut.2", f"{dst}.shortcut.neuron")
    plan.points.append((src, dst))
    return biases


def _qkformer(plan: _Plan, img_size: int | None) -> tuple[str, dict[str, Any]]:
    src = plan.src
    biases = _qk_embed(plan, "patch_embed1", "patch_embed1", [
        ("conv1", "bn1", "pool1", "lif1"), ("conv2", "bn2", "pool2", "lif2"), ("conv3", "bn3", None, "lif3")])
    stage_heads, depths, ratios, early, last, mlp_biases = [], [], [], [], [], set()
    for s in (1, 2, 3):
        if s > 1:
            biases |= _qk_embed(plan, f"patch_embed{s}", f"patch_embed{s}", [
                ("conv1", "bn1", "pool", "lif1"), ("conv2", "bn2", None, "lif2")])
        width = plan.module(f"patch_embed{s}.shortcut.0").out_channels
        blocks = plan.module(f"stage{s}")
        depths.append(len(blocks))
        heads = []
        for j in range(len(blocks)):
            path = f"stage{s}.{j}"
            if s < 3:
                early.append(_token_qk(plan, f"{path}.attn", f"{path}.attn", width))
                heads.append(early[-1]["heads"])
            else:
                last.append(_ssa(plan, f"{path}.attn", f"{path}.attn", width))
                heads.append(last[-1]["heads"])
            hidden, bias = _mlp(plan, f"{path}.mlp", f"{path}.mlp", ("fc1", "bn1", "lif1", "fc2", "bn2", "lif2"))
            ratios.append(_mlp_ratio(hidden, width, f"{path}.mlp"))
            mlp_biases.add(bias)
            plan.points.append((path, path))
        stage_heads.append(_same(heads, f"stage{s} heads") if heads else 1)  # an empty stage has no attention
    plan.linear("head", "head")
    if len(biases) != 1:
        raise ConversionError("patch embeddings: some convs have a bias and others not; ours have all or none")
    if mlp_biases != {True}:
        raise ConversionError("MLP projections without bias: spikformers' HST MLPs have biases")
    if not last:
        raise ConversionError("stage3: QKFormer without last-stage blocks has no equivalent")
    # heads are per stage (checked above); every other attention setting is per model
    early_set = {k: _same([a[k] for a in early], f"token attention {k}") for k in early[0] if k != "heads"} \
        if early else {}
    last_set = {k: _same([a[k] for a in last], f"self-attention {k}") for k in last[0] if k != "heads"}
    if early_set.get("qkv_bias"):
        raise ConversionError("token attention with a Q/K bias: not built here")
    dim = plan.module("patch_embed3.shortcut.0").out_channels
    heads = stage_heads[0] if len(set(stage_heads)) == 1 else tuple(stage_heads)
    early_kwargs: dict[str, Any] = {"q_split": False}  # QKFormer's token attention sums Q over the head
    if early_set:
        early_kwargs.update(proj_bias=early_set["proj_bias"], attn_v_th=early_set["attn_v_th"])
    overrides = dict(
        img_size=img_size or 224, in_chans=src.patch_embed1.conv1.in_channels, num_classes=src.head.out_features,
        T=int(src.T), embed="imagenet", depths=tuple(depths), heads=heads,
        mlp_ratio=_same(ratios, "MLP ratio"), conv_bias=biases.pop(),
        attn_early_kwargs=early_kwargs,
        attn_last_kwargs={"qkv_bias": last_set["qkv_bias"], "proj_bias": last_set["proj_bias"],
                          "scale": last_set["scale"], "attn_v_th": last_set["attn_v_th"]},
    )
    return f"qkformer_{sum(depths)}_{dim}", overrides


# ---------------------------------------------------------------------------------------------------------
# Spike-driven Transformer


def _sdt(plan: _Plan, img_size: int | None) -> tuple[str, dict[str, Any]]:
    from spikingjelly.activation_based.layer.attention import SpikeDrivenSelfAttention

    src = plan.src
    stem = src.patch_embed
    pools, widths, biases = [], [], set()
    for i, stage in enumerate([*stem.stages, stem.final_stage]):
        path = f"patch_embed.stages.{i}" if i < 3 else "patch_embed.final_stage"
        layers = list(stage)
        _check_conv(layers[0], f"{path}.0", nn.Conv2d, 3, 1, 1)
        biases.add(layers[0].bias is not None)
        widths.append(layers[0].out_channels)
        plan.linear(f"{path}.0", f"embed.stages.{i}.conv.conv")
        plan.norm(f"{path}.1", f"embed.stages.{i}.conv.bn")
        if i < 3:  # conv, norm, LIF, then the pool (of spikes)
            plan.neuron(f"{path}.2", f"embed.stages.{i}.neuron")
            pools.append(_check_pool(layers[3:], f"{path}[3:]"))
        else:  # conv, norm, pool: no neuron, the embedding stays real-valued
            pools.append(_check_pool(layers[2:], f"{path}[2:]"))
    dim = widths[-1]
    if widths != [dim // 8, dim // 4, dim // 2, dim]:
        raise ConversionError(f"patch_embed: widths {widths}; our SPS has D/8, D/4, D/2, D")
    if len(biases) != 1:
        raise ConversionError("patch_embed: some stage convs have a bias and others not; ours have all or none")
    variants = {(False, False, True, True): "cifar", (True, True, True, True): "imagenet"}
    if tuple(pools) not in variants:
        raise ConversionError(f"patch_embed: pooling_stat {pools}; ours pool the last 2 or all 4 stages")
    _check_conv(stem.rpe_conv, "patch_embed.rpe_conv", nn.Conv2d, 3, 1, 1)
    plan.neuron("patch_embed.final_lif", "embed.rpe_neuron")
    plan.linear("patch_embed.rpe_conv", "embed.rpe.conv")
    plan.norm("patch_embed.rpe_bn", "embed.rpe.bn")
    plan.points.append(("patch_embed.final_lif", "embed.rpe_neuron"))

    attn, mlp = [], []
    for j in range(len(src.blocks)):
        a, d = f"blocks.{j}.attn", f"blocks.{j}"
        m = plan.module(a)
        if type(m) is not SpikeDrivenSelfAttention:
            raise ConversionError(f"{a}: expected SpikeDrivenSelfAttention, found {type(m).__name__}")
        plan.neuron(f"{a}.shortcut_lif", f"{d}.shortcut_neuron")
        plan.points.append((f"{a}.shortcut_lif", f"{d}.shortcut_neuron"))
        for name in "qkv":
            _check_conv(plan.module(f"{a}.{name}_conv"), f"{a}.{name}_conv", nn.Conv2d, 1, 1, 0)
            plan.linear(f"{a}.{name}_conv", f"{d}.attn.{name}.linear", squeeze=True)
            plan.norm(f"{a}.{name}_bn", f"{d}.attn.{name}.bn")
            plan.neuron(f"{a}.{name}_lif", f"{d}.attn.{name}.neuron")
        plan.neuron(f"{a}.attn_lif", f"{d}.attn.attn_neuron")
        _check_conv(m.proj_conv, f"{a}.proj_conv", nn.Conv2d, 1, 1, 0)
        plan.linear(f"{a}.proj_conv", f"{d}.attn.proj.linear", squeeze=True)
        plan.norm(f"{a}.proj_bn", f"{d}.attn.proj.bn")  # no neuron: the block adds the norm's output
        attn.append({"heads": m.num_heads, "attn_v_th": float(m.attn_lif.v_threshold),
                     "qkv_bias": m.q_conv.bias is not None})
        p, mp = f"blocks.{j}.mlp", plan.module(f"blocks.{j}.mlp")
        if mp.residual:
            raise ConversionError(f"{p}: hidden width = width gives spikingjelly's inner MLP residual, not built here")
        for i in (1, 2):
            _check_conv(plan.module(f"{p}.fc{i}"), f"{p}.fc{i}", nn.Conv2d, 1, 1, 0)
            plan.neuron(f"{p}.lif{i}", f"{d}.mlp.fc{i}_neuron")
            plan.linear(f"{p}.fc{i}", f"{d}.mlp.fc{i}.linear", squeeze=True)
            plan.norm(f"{p}.bn{i}", f"{d}.mlp.fc{i}.bn")
        fc_biases = {mp.fc1.bias is not None, mp.fc2.bias is not None}
        if len(fc_biases) != 1:
            raise ConversionError(f"{p}: one MLP projection has a bias and the other not; ours has both or neither")
        mlp.append((mp.fc1.out_channels, fc_biases.pop()))
    if not attn:
        raise ConversionError("blocks: a Spike-driven Transformer without blocks has no equivalent")
    settings = {k: _same([a[k] for a in attn], f"attention {k}") for k in attn[0]}
    hidden, mlp_bias = _same(mlp, "MLP (hidden width, bias)")
    plan.neuron("head_lif", "head_neuron")
    plan.points.append(("head_lif", "head_neuron"))
    plan.linear("head", "head")
    variant = variants[tuple(pools)]
    name = f"sdt_{len(src.blocks)}_{dim}" + ("_cifar" if variant == "cifar" else "")
    overrides = dict(
        img_size=img_size or 224, in_chans=stem.stages[0][0].in_channels, num_classes=src.head.out_features,
        T=int(src.T), heads=settings["heads"], mlp_ratio=_mlp_ratio(hidden, dim, "blocks.0.mlp"),
        qkv_bias=settings["qkv_bias"], mlp_bias=mlp_bias, sps_form="sdt", sps_bias=biases.pop(), head_neuron=True,
        attn_kwargs={"attn_v_th": settings["attn_v_th"]},
    )
    return name, overrides


# ---------------------------------------------------------------------------------------------------------


def _copy(plan: _Plan, model: nn.Module) -> None:
    """Fill every target tensor from the key map, strictly (see the module docstring)."""
    fill_state_dict(plan.keys, plan.ignored, plan.src.state_dict(), model, "the spikingjelly network")


def _neuron_overrides(plan: _Plan, model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per target LIF, the settings in which the source neuron differs from what the builder made."""
    out: dict[str, dict[str, Any]] = {}
    for src, dst in plan.neurons:
        lif = model.get_submodule(dst)
        if not isinstance(lif, LIF):
            raise ConversionError(f"{src} -> {dst}: the target is {type(lif).__name__}, not a LIF")
        diff = {k: v for k, v in _lif_settings(plan.module(src), src).items() if getattr(lif, k) != v}
        if diff:
            out[dst] = diff
    return out


def _check_neurons(plan: _Plan, model: nn.Module) -> None:
    """Every stateful source module and every target neuron mapped, each pair with equal settings."""
    from spikingjelly.activation_based.base import MemoryModule

    src_names = {n for n, m in plan.src.named_modules() if isinstance(m, MemoryModule)}
    dst_names = [d for _, d in plan.neurons]
    ours = {n for n, m in model.named_modules() if isinstance(m, Neuron)}
    missing = sorted(src_names - {s for s, _ in plan.neurons})
    if missing or set(dst_names) != ours or len(dst_names) != len(ours):
        raise ConversionError(f"incomplete neuron map: source neurons unmapped {missing}; "
                              f"target neurons unmapped {sorted(ours - set(dst_names))}")
    if _neuron_overrides(plan, model):
        raise ConversionError(f"neurons still differ after building: {_neuron_overrides(plan, model)}")


def convert_spikingjelly(module: nn.Module, img_size: int | None = None) -> Conversion:
    """Build the spikformers equivalent of a spikingjelly model-zoo network and copy its weights and statistics.

    Args:
        module: a ``Spikformer``, ``QKFormer`` or ``SpikeDrivenTransformer`` of
            ``spikingjelly.activation_based.model`` (any factory or constructor arguments; trained or not).
        img_size: the input size our model checks. Default: the Spikformer's ``patch_embed.image_size``; 224 for
            QKFormer and SDT, whose spikingjelly networks record none (they run at any size divisible by their
            downsampling, and so does ours once built for it).

    Returns a :class:`Conversion`: ``.model`` is built by :func:`spikformers.create_model` (so ``default_cfg``
    rebuilds it, e.g. from a saved checkpoint), on the source's device and dtype, in its train/eval mode.
    Raises :class:`ConversionError` (a ValueError) naming the part that has no exact equivalent.
    """
    try:
        from spikingjelly.activation_based.model.qkformer import QKFormer
        from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer
        from spikingjelly.activation_based.model.spikformer import Spikformer
    except ImportError as e:
        raise ImportError(f"from_spikingjelly needs spikingjelly 2.0 (pip install spikingjelly==2.0.0): {e}") from None
    plan = _Plan(module)
    if type(module) is Spikformer:
        name, overrides = _spikformer(plan, img_size)
    elif type(module) is QKFormer:
        name, overrides = _qkformer(plan, img_size)
    elif type(module) is SpikeDrivenTransformer:
        name, overrides = _sdt(plan, img_size)
    else:
        raise ConversionError(f"{type(module).__module__}.{type(module).__name__} is not supported; "
                              f"supported: {SUPPORTED}")
    model = create_model(name, **overrides)
    neurons = _neuron_overrides(plan, model)
    if neurons:  # rebuilt through the registry, so that default_cfg records them
        model = create_model(name, **overrides, neurons=neurons)
    _check_neurons(plan, model)
    ref = next(module.parameters())
    model.to(device=ref.device, dtype=ref.dtype)
    _copy(plan, model)
    model.train(module.training)
    return Conversion(module, model, plan.keys, plan.ignored, plan.neurons, plan.points,
                      per_step_output=type(module) is Spikformer)


def from_spikingjelly(module: nn.Module, img_size: int | None = None) -> nn.Module:
    """The spikformers model equal to a spikingjelly model-zoo network (Spikformer, QKFormer, Spike-driven
    Transformer), weights and batch-norm statistics included.

    Spikformer's spikingjelly network returns logits per time step ``[T, B, K]``; ours returns their mean over T,
    ``[B, K]`` (the head is linear, so the two agree to rounding). See :func:`convert_spikingjelly` for the
    arguments and docs/checkpoints.md for every difference and the option that reproduces it.
    """
    return convert_spikingjelly(module, img_size).model


# ---------------------------------------------------------------------------------------------------------
# parity: run both networks on the same input and compare what they compute


@dataclass
class Parity:
    """What :func:`check_parity` measured.

    ``logits``: max |ours - theirs| of the logits (theirs averaged over T where they are per step);
    ``points``: per compared point (source name), max |difference| of its output; ``rates``: per point, the
    fraction of nonzero outputs (a comparison of silent layers proves little); ``grads`` / ``buffers``: max
    |difference| over every mapped parameter gradient / batch-norm statistic after one training step (None in
    evaluation); ``worst``: the key or point where the largest of those differences is.
    """

    logits: float
    points: dict[str, float]
    rates: dict[str, float]
    grads: float | None = None
    buffers: float | None = None
    worst: str = ""

    @property
    def spikes_identical(self) -> bool:
        """Every compared point's output equal bit for bit."""
        return all(d == 0.0 for d in self.points.values())


def _as_channels_first(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` (spikingjelly, our HST embeddings) or ``[T, B, N, C]`` (our tokens) -> ``[T, B, C, N]``;
    pooled ``[T, B, C]`` as it is."""
    if x.dim() == 3:
        return x
    return x.flatten(3) if x.dim() == 5 else x.transpose(2, 3)


def check_parity(conversion: Conversion, x: torch.Tensor, train: bool = False, seed: int = 0) -> Parity:
    """Run source and converted model on ``x`` and measure how far apart they are.

    In evaluation mode: logits and the outputs of every point of ``conversion.points``. With ``train=True``:
    both in training mode, one forward and one backward of the same random projection of the logits; then
    also every mapped parameter's gradient and every batch-norm statistic. The source's neuron states are
    reset before and after (spikingjelly's ``functional.reset_net``); gradients are cleared first; both networks
    are returned to the mode they were in. A training-mode check updates both networks' batch-norm statistics, as
    any training step does: run it on copies where that matters.
    """
    from spikingjelly.activation_based import functional

    src, model = conversion.source, conversion.model
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for s, d in conversion.points:
        for side, name, net in (("s", s, src), ("d", d, model)):
            def hook(mod: nn.Module, args: Any, out: torch.Tensor, key: str = f"{side}:{s}") -> None:
                outs[key] = _as_channels_first(out.detach())
            hooks.append(net.get_submodule(name).register_forward_hook(hook))
    modes = src.training, model.training
    src.train(train)
    model.train(train)
    functional.reset_net(src)
    src.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    try:
        with torch.set_grad_enabled(train):
            theirs, ours = src(x), model(x)
            if conversion.per_step_output:
                theirs = theirs.mean(0)
            if train:
                w = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed), dtype=ours.dtype)
                (theirs * w.to(theirs.device)).sum().backward()
                (ours * w.to(ours.device)).sum().backward()
    finally:
        for h in hooks:
            h.remove()
        functional.reset_net(src)
        src.train(modes[0])
        model.train(modes[1])
    diffs = {"logits": (ours - theirs).abs().max().item()}
    points, rates = {}, {}
    for s, _ in conversion.points:
        a, b = outs[f"s:{s}"], outs[f"d:{s}"]
        points[s] = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
        rates[s] = (a != 0).double().mean().item()
    diffs.update(points)
    result = Parity(logits=diffs["logits"], points=points, rates=rates)
    if train:
        src_params, src_buffers = dict(src.named_parameters()), dict(src.named_buffers())
        dst_params, dst_buffers = dict(model.named_parameters()), dict(model.named_buffers())
        grads, buffers = {}, {}
        for km in conversion.keys:
            if km.source in src_params:
                g_s, g_d = src_params[km.source].grad, dst_params[km.target].grad
                if g_s is None or g_d is None:  # a parameter one side uses and the other not
                    grads[km.target] = float("inf") if (g_s is None) != (g_d is None) else 0.0
                else:
                    grads[km.target] = (km.apply(g_s) - g_d).abs().max().item()
            else:
                b_s, b_d = km.apply(src_buffers[km.source]), dst_buffers[km.target]
                buffers[km.target] = (b_s.double() - b_d.double()).abs().max().item()
        result.grads, result.buffers = max(grads.values()), max(buffers.values())
        diffs.update(grads)
        diffs.update(buffers)
    result.worst = max(diffs, key=diffs.__getitem__)
    return result
