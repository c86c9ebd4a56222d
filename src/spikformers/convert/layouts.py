"""The state-dict layouts spikformers reads, how each is recognised, and the rules that rename its keys to ours.

A layout is the set of names one code base gives its tensors. The official repositories keep one module per
tensor group with the weights as ``nn.Linear``, ``Conv1d`` or 1x1 ``Conv2d``; their key maps are rules here, one
source module pattern -> one spikformers module, each reshape (a 1x1 convolution to a linear) named by the rule.
spikingjelly's zoo fuses Q/K/V into one projection: its state dicts go through the network itself and
:func:`~spikformers.convert.convert_spikingjelly` (see :mod:`spikformers.convert.importer`).

Official code the rules follow (key lists with shapes are in ``tests/data/official_keys/``):

* ``spikformer-official``: ZK-Zhou/spikformer ``cifar10/model.py`` (``nn.Linear`` projections),
  ``imagenet/model.py`` (``Conv1d`` attention, 1x1 ``Conv2d`` MLP), ``cifar10dvs/model.py`` (``Conv1d``
  everywhere, an unused ``pos_embed`` and ``norm``);
* ``qkformer-official``: zhouchenlin2096/QKFormer ``imagenet/qkformer.py``, ``cifar10/model.py``;
* ``sdt-official``: BICLab/Spike-Driven-Transformer ``model/spikeformer.py``, ``module/sps.py``,
  ``module/ms_conv.py`` (Spike-driven Transformer v1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .keymap import ConversionError, KeyMap

SOURCES = ("spikformers", "spikingjelly", "spikformer-official", "qkformer-official", "sdt-official")


@dataclass(frozen=True)
class Rule:
    """Source module path (a regex, named groups) -> target module path (a format string over the groups).

    ``squeeze``: the module is a 1x1 ``Conv1d`` / ``Conv2d`` whose weight becomes a ``Linear`` weight.
    """

    source: str
    target: str
    squeeze: bool = False


@dataclass(frozen=True)
class Layout:
    """One code base's state-dict layout.

    ``source``: the ``--source`` name; ``code``: where it comes from; ``family``: the spikformers model family it
    builds; ``variant``: the registry variant it fixes (None: named by the user or the training args);
    ``rules`` / ``ignored``: key rules and (key regex, reason) of tensors the code builds and never uses;
    ``options``: builder overrides the code's architecture needs beyond the family's defaults.
    """

    source: str
    code: str
    family: str
    variant: str | None = None
    rules: tuple[Rule, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def key_map(self, keys: list[str]) -> tuple[list[KeyMap], dict[str, str]]:
        """The key map of a source state dict: each key through the first rule that matches its module, or into
        the ignore list; keys matching nothing are left for :func:`fill_state_dict` to report."""
        maps, ignored = [], {}
        for key in keys:
            reason = next((why for pattern, why in self.ignored if re.fullmatch(pattern + r"(?:\.\w+)?", key)), None)
            if reason is not None:
                ignored[key] = reason
                continue
            module, _, param = key.rpartition(".")
            for rule in self.rules:
                m = re.fullmatch(rule.source, module)
                if m:
                    target = rule.target.format(**m.groupdict())
                    maps.append(KeyMap(key, f"{target}.{param}" if target else param,
                                       squeeze=rule.squeeze and param == "weight"))
                    break
        return maps, ignored


def _conv_bn(src: str, dst: str, squeeze: bool = False) -> tuple[Rule, Rule]:
    """A projection and its norm named ``{src}_conv`` (or ``_linear``) / ``{src}_bn``: rules to ``{dst}.linear`` /
    ``{dst}.bn`` (``squeeze`` for the 1x1 convolutions)."""
    kind = "conv" if squeeze else "linear"
    return Rule(f"{src}_{kind}", f"{dst}.linear", squeeze), Rule(f"{src}_bn", f"{dst}.bn")


# ZK-Zhou/spikformer: SPS proj_conv{,1,2,3} / proj_bn{,1,2,3} / rpe_conv / rpe_bn, blocks under ``block``
_SPS = (
    Rule(r"patch_embed\.proj_conv", "embed.stages.0.conv.conv"),
    Rule(r"patch_embed\.proj_bn", "embed.stages.0.conv.bn"),
    Rule(r"patch_embed\.proj_conv(?P<i>[123])", "embed.stages.{i}.conv.conv"),
    Rule(r"patch_embed\.proj_bn(?P<i>[123])", "embed.stages.{i}.conv.bn"),
    Rule(r"patch_embed\.rpe_conv", "embed.rpe.conv"),
    Rule(r"patch_embed\.rpe_bn", "embed.rpe.bn"),
    Rule(r"head", "head"),
)
_BLOCK = r"block\.(?P<j>\d+)"
_UNUSED_NORMS = (r"block\.\d+\.norm[12]", "LayerNorm the official Block builds and never calls")


def _spikformer_rules(squeeze: bool) -> tuple[Rule, ...]:
    """The SPS plus the blocks' attention and MLP units (1x1 conv + BN; ``squeeze``: Conv1d / Conv2d weights)."""
    return (_SPS + _conv_bn(rf"{_BLOCK}\.attn\.(?P<p>q|k|v|proj)", "blocks.{j}.attn.{p}", squeeze=squeeze)
            + _conv_bn(rf"{_BLOCK}\.mlp\.fc(?P<i>[12])", "blocks.{j}.mlp.fc{i}", squeeze=squeeze))


SPIKFORMER_CIFAR = Layout(
    "spikformer-official", "ZK-Zhou/spikformer cifar10/model.py", "spikformer", "cifar", _spikformer_rules(False),
    (_UNUSED_NORMS,),
)
SPIKFORMER_IMAGENET = Layout(
    "spikformer-official", "ZK-Zhou/spikformer imagenet/model.py", "spikformer", "imagenet", _spikformer_rules(True),
    (_UNUSED_NORMS,),
)
SPIKFORMER_DVS = Layout(
    "spikformer-official", "ZK-Zhou/spikformer cifar10dvs/model.py", "spikformer", "dvs",
    SPIKFORMER_IMAGENET.rules,  # the same names, Conv1d MLP instead of Conv2d: squeezed alike
    (_UNUSED_NORMS, (r"pos_embed", "position embedding parameter built and never used (the SPS conv is the RPE)"),
     (r"norm", "LayerNorm built and never called")),
)

# zhouchenlin2096/QKFormer: patch_embed1 proj{,1,2}_{conv,bn} + proj_res_*, patch_embed2/3 proj3/proj4/proj_res,
# token attention under ``tssa``, last-stage SSA under ``attn`` (ImageNet) or ``ssa`` (CIFAR), MLP fc1/fc2 (ImageNet)
# or mlp1/mlp2 (CIFAR), all 1x1 convolutions
_STAGE = r"stage(?P<s>[123])\.(?P<j>\d+)"
QKFORMER_RULES = (
    Rule(r"patch_embed1\.proj_(?P<c>conv|bn)", "patch_embed1.convs.0.conv.{c}"),
    Rule(r"patch_embed1\.proj(?P<i>[12])_(?P<c>conv|bn)", "patch_embed1.convs.{i}.conv.{c}"),
    Rule(r"patch_embed(?P<s>[23])\.proj3_(?P<c>conv|bn)", "patch_embed{s}.convs.0.conv.{c}"),
    Rule(r"patch_embed(?P<s>[23])\.proj4_(?P<c>conv|bn)", "patch_embed{s}.convs.1.conv.{c}"),
    Rule(r"patch_embed(?P<s>[123])\.proj_res_(?P<c>conv|bn)", "patch_embed{s}.shortcut.conv.{c}"),
    *_conv_bn(rf"{_STAGE}\.tssa\.(?P<p>q|k|proj)", "stage{s}.{j}.attn.{p}", squeeze=True),
    *_conv_bn(rf"{_STAGE}\.(?:attn|ssa)\.(?P<p>q|k|v|proj)", "stage{s}.{j}.attn.{p}", squeeze=True),
    *_conv_bn(rf"{_STAGE}\.mlp\.(?:fc|mlp)(?P<i>[12])", "stage{s}.{j}.mlp.fc{i}", squeeze=True),
    Rule(r"head", "head"),
)
QKFORMER_IMAGENET = Layout("qkformer-official", "zhouchenlin2096/QKFormer imagenet/qkformer.py", "qkformer",
                           "imagenet", QKFORMER_RULES)
QKFORMER_CIFAR = Layout("qkformer-official", "zhouchenlin2096/QKFormer cifar10/model.py", "qkformer", "cifar",
                        QKFORMER_RULES)

# BICLab/Spike-Driven-Transformer v1: Spikformer's SPS names, 1x1 Conv2d everywhere, an unused talking_heads conv
SDT = Layout(
    "sdt-official", "BICLab/Spike-Driven-Transformer model/spikeformer.py", "sdt", None,
    _SPS + _conv_bn(rf"{_BLOCK}\.attn\.(?P<p>q|k|v|proj)", "blocks.{j}.attn.{p}", squeeze=True)
    + _conv_bn(rf"{_BLOCK}\.mlp\.fc(?P<i>[12])", "blocks.{j}.mlp.fc{i}", squeeze=True),
    ((r"block\.\d+\.attn\.talking_heads", "Conv1d the official attention builds and never calls"),),
    options={"sps_form": "sdt", "head_neuron": True},  # real-valued embedding, LIF before the head
)

# Our own names: a state dict of a spikformers model (a bare .safetensors, torch.save(model.state_dict())); the
# family is the named model's
SPIKFORMERS = Layout("spikformers", "spikformers", "")

# spikingjelly 2.0 zoo state dicts: mapped through the network (fused Q/K/V), so no rules here
SJ_SPIKFORMER = Layout("spikingjelly", "spikingjelly.activation_based.model.spikformer.Spikformer", "spikformer")
SJ_QKFORMER = Layout("spikingjelly", "spikingjelly.activation_based.model.qkformer.QKFormer", "qkformer", "imagenet")
SJ_SDT = Layout("spikingjelly", "spikingjelly.activation_based.model.spike_driven_transformer."
                "SpikeDrivenTransformer", "sdt")


def detect(state: dict[str, torch.Tensor], source: str = "auto") -> Layout:
    """The layout of a state dict, from the keys only its code base has; ``source`` (a :data:`SOURCES` name)
    restricts the choice and is checked. Raises :class:`ConversionError` for a state dict none of them fits."""
    if source != "auto" and source not in SOURCES:
        raise ConversionError(f"unknown source {source!r}; expected auto or one of {', '.join(SOURCES)}")
    has = state.__contains__
    any_key = lambda pattern: any(re.fullmatch(pattern, k) for k in state)  # noqa: E731
    found: Layout | None = None
    if has("embed.stages.0.conv.conv.weight") or has("patch_embed1.convs.0.conv.conv.weight"):
        found = SPIKFORMERS
    elif has("patch_embed.stages.0.conv_bn.block.0.weight"):
        found = SJ_SPIKFORMER
    elif has("patch_embed1.conv1.weight"):
        found = SJ_QKFORMER
    elif has("patch_embed.final_stage.0.weight"):
        found = SJ_SDT
    elif has("patch_embed1.proj_res_conv.weight"):
        found = QKFORMER_IMAGENET if has("patch_embed1.proj2_conv.weight") else QKFORMER_CIFAR
    elif has("patch_embed.proj_conv.weight"):
        if any_key(r"block\.\d+\.attn\.talking_heads\.weight"):
            found = SDT
        elif has("pos_embed"):
            found = SPIKFORMER_DVS
        elif any_key(r"block\.\d+\.attn\.q_linear\.weight"):
            found = SPIKFORMER_CIFAR
        elif any_key(r"block\.\d+\.attn\.q_conv\.weight"):
            found = SPIKFORMER_IMAGENET
    if found is None:
        first = sorted(state)[:6]
        raise ConversionError(f"the state dict matches no layout spikformers reads (its keys start {first}); "
                              f"supported: {', '.join(SOURCES)}")
    if source not in ("auto", found.source):
        raise ConversionError(f"--source {source}: the keys are those of {found.code} ({found.source})")
    return found


# ---------------------------------------------------------------------------------------------------------
# reading architecture settings off tensor shapes (our names)


def blocks_per_stage(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """How many blocks ``{prefix}.{j}.`` the state dict has (0 if none), checking they are numbered 0..n-1."""
    found = {int(m[1]) for k in shapes for m in [re.match(rf"{re.escape(prefix)}\.(\d+)\.", k)] if m}
    if found != set(range(len(found))):
        raise ConversionError(f"{prefix}: blocks numbered {sorted(found)}, expected 0..{len(found) - 1}")
    return len(found)


def read_architecture(family: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The settings stored in a state dict in our names: ``depth``, ``dim``, ``num_classes``, ``in_chans``,
    ``mlp_ratio``, the biases, and the stage depths of a hierarchical model. Raises :class:`ConversionError`
    naming a key it needs and does not find."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ConversionError(f"expected a tensor {key} (in spikformers' names) and found none")
        return shapes[key]

    num_classes, dim = shape("head.weight")
    if family == "qkformer":
        depths = tuple(blocks_per_stage(shapes, f"stage{s}") for s in (1, 2, 3))
        first = next((f"stage{s}.0" for s in (1, 2, 3) if depths[s - 1]), None)
        if first is None or not depths[2]:
            raise ConversionError(f"stage depths {depths}: a QKFormer needs blocks in its last stage")
        width = shape(f"{first}.mlp.fc1.linear.weight")[1]
        out: dict[str, Any] = dict(depth=sum(depths), dim=dim, depths=depths,
                                   in_chans=shape("patch_embed1.convs.0.conv.conv.weight")[1],
                                   mlp_ratio=shape(f"{first}.mlp.fc1.linear.weight")[0] / width,
                                   conv_bias="patch_embed1.convs.0.conv.conv.bias" in shapes,
                                   proj_bias="stage3.0.attn.proj.linear.bias" in shapes,
                                   qkv_bias="stage3.0.attn.q.linear.bias" in shapes)
    else:
        depth = blocks_per_stage(shapes, "blocks")
        if not depth:
            raise ConversionError("no blocks found (keys blocks.0... in spikformers' names)")
        out = dict(depth=depth, dim=dim, in_chans=shape("embed.stages.0.conv.conv.weight")[1],
                   mlp_ratio=shape("blocks.0.mlp.fc1.linear.weight")[0] / dim,
                   qkv_bias="blocks.0.attn.q.linear.bias" in shapes,
                   mlp_bias="blocks.0.mlp.fc1.linear.bias" in shapes,
                   proj_bias="blocks.0.attn.proj.linear.bias" in shapes,
                   sps_bias="embed.stages.0.conv.conv.bias" in shapes)
    out["num_classes"] = num_classes
    return out
