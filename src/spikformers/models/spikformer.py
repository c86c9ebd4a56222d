"""Spikformer (Zhou et al., ICLR 2023): spiking patch splitting, L encoder blocks, a linear head.

    x [B, C, H, W] or [T, B, C, H, W]
    -> SPS: 4 x (Conv3x3-BN-LIF [-MaxPool]) + relative position embedding     -> tokens [T, B, N, D]
    -> L x Block: x = x + DropPath(Attn(x)); x = x + DropPath(MLP(x))
    -> mean over tokens, mean over T, Linear                                  -> logits [B, num_classes]

Any attention mechanism in :mod:`spikformers.attention` plugs in through ``attn=``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention import create_attention
from ..layers import MLP, ConvBN, ConvBNSpike, DropPath, drop_path_rates, time_input
from ..memory import checkpoint_blocks
from ..neurons import LIF
from .blocks import MembraneBlock

# Which of the four SPS convs is followed by a max-pool, per published variant (docs/models.md, "SPS and RPE").
SPS_POOLS: dict[str, tuple[bool, bool, bool, bool]] = {
    "cifar": (False, False, True, True),
    "imagenet": (True, True, True, True),
    "dvs": (True, True, True, True),
}


class SPS(nn.Module):
    """Spiking patch splitting ``[T, B, C_in, H, W] -> [T, B, N, D]`` with relative position embedding.

    Channel progression D/8, D/4, D/2, D of Conv3x3-BN-LIF stages; pools as ``SPS_POOLS[variant]`` says, after
    the LIF (``pool="spikes"``, the official code) or between BN and LIF (``pool="membrane"``, spikingjelly's
    Spikformer). Then, ``form="spikformer"``: ``x = LIF(BN(Conv3x3(x))) + x`` (spikes plus spikes);
    ``form="sdt"`` (Spike-driven Transformer): the last stage has no LIF (its pool follows the BN) and
    ``x = BN(Conv3x3(LIF(x))) + x``, a real-valued output for membrane-shortcut blocks.
    ``bias``: biases on the four stage convs (none in the official codes; spikingjelly's SDT has them).
    """

    def __init__(self, in_chans: int, dim: int, variant: str = "cifar", pool: str = "spikes",
                 form: str = "spikformer", bias: bool = False) -> None:
        super().__init__()
        if variant not in SPS_POOLS:
            raise ValueError(f"unknown SPS variant {variant!r}; expected one of {sorted(SPS_POOLS)}")
        if dim % 8:
            raise ValueError(f"Spikformer dim must be divisible by 8, got {dim}")
        if pool not in ("spikes", "membrane"):
            raise ValueError(f"SPS pool must be 'spikes' or 'membrane', got {pool!r}")
        if form not in ("spikformer", "sdt"):
            raise ValueError(f"SPS form must be 'spikformer' or 'sdt', got {form!r}")
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        self.form = form
        last = len(widths) - 2
        self.stages = nn.Sequential(  # form "sdt": the last stage has no neuron and keeps the norm's (pooled) output
            *(ConvBNSpike(widths[i], widths[i + 1], pool=p, pool_membrane=pool == "membrane", bias=bias,
                          neuron=None if form == "sdt" and i == last else "lif")
              for i, p in enumerate(SPS_POOLS[variant]))
        )
        self.rpe = ConvBN(dim, dim, 3)
        self.rpe_neuron = LIF()
        self.downsample = 2 ** sum(SPS_POOLS[variant])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)
        if self.form == "sdt":
            x = self.rpe(self.rpe_neuron(x)) + x
        else:
            x = self.rpe_neuron(self.rpe(x)) + x
        return x.flatten(3).transpose(2, 3).contiguous()  # [T, B, D, H, W] -> [T, B, N, D], token rows contiguous


class Block(nn.Module):
    """Spikformer encoder block ``[T, B, N, D] -> [T, B, N, D]``: ``x + Attn(x)``, then ``x + MLP(x)``.

    ``drop_path``: stochastic-depth probability for both residual branches (per sample, see
    :class:`~spikformers.layers.DropPath`); ``mlp_bias``: biases on the MLP's projections.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        attn: str | type[nn.Module] = "ssa",
        attn_defaults: dict[str, Any] | None = None,
        drop_path: float = 0.0,
        mlp_bias: bool = True,
        **attn_kwargs: Any,
    ) -> None:
        super().__init__()
        self.attn = create_attention(attn, dim, heads, defaults=attn_defaults, **attn_kwargs)
        self.mlp = MLP(dim, mlp_ratio, bias=mlp_bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


BLOCKS: dict[str, type[nn.Module]] = {"spikformer": Block}
BLOCKS["membrane"] = MembraneBlock  # Spike-driven Transformer membrane shortcuts (models/blocks.py)


class Spikformer(nn.Module):
    """Flat spiking transformer: SPS, ``depth`` blocks of width ``dim``, mean-pool head.

    Args:
        img_size: input height and width; in_chans: input channels; num_classes: head outputs.
        dim, depth, heads, mlp_ratio: transformer shape. T: time steps a static image is repeated over.
        sps: SPS variant (``"cifar"``, ``"imagenet"``, ``"dvs"``); qkv_bias: bias on Q/K/V projections.
        attn: attention name or class; attn_kwargs: options passed to every attention module as given;
        attn_defaults: the variant's soft attention defaults (passed where the mechanism takes them).
        block: block form, a key of :data:`BLOCKS`: ``"spikformer"`` (spike residuals) or ``"membrane"``
            (Spike-driven Transformer membrane shortcuts, :class:`~spikformers.models.blocks.MembraneBlock`).
        drop_path_rate: stochastic depth of the last block; block i gets ``rate * i / (depth - 1)`` (timm's
            linear ramp), applied per sample to both residual branches in training. No parameters.
        sps_pool: where SPS max-pools, ``"spikes"`` (after the LIF, the official code) or ``"membrane"`` (between
            BN and LIF, spikingjelly's Spikformer). mlp_bias: biases on the MLP projections (off in spikingjelly).
        sps_form, sps_bias: SPS ``form`` (``"spikformer"``, or ``"sdt"``: Spike-driven Transformer's real-valued
            embedding) and conv biases, see :class:`SPS`. head_neuron: a LIF on the token mean before the head
            (Spike-driven Transformer), ``head(mean_T(LIF(mean_N(x))))``.

    Shape: ``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> logits ``[B, num_classes]`` (mean over time).
    """

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        num_classes: int = 10,
        dim: int = 384,
        depth: int = 4,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        T: int = 4,
        sps: str = "cifar",
        qkv_bias: bool = True,
        attn: str | type[nn.Module] = "ssa",
        attn_kwargs: dict[str, Any] | None = None,
        attn_defaults: dict[str, Any] | None = None,
        block: str = "spikformer",
        drop_path_rate: float = 0.0,
        sps_pool: str = "spikes",
        mlp_bias: bool = True,
        sps_form: str = "spikformer",
        sps_bias: bool = False,
        head_neuron: bool = False,
    ) -> None:
        super().__init__()
        self.T, self.img_size, self.in_chans, self.num_classes = T, img_size, in_chans, num_classes
        self.embed = SPS(in_chans, dim, sps, pool=sps_pool, form=sps_form, bias=sps_bias)
        if img_size % self.embed.downsample:
            raise ValueError(
                f"img_size {img_size} is not divisible by the {sps} SPS downsampling factor {self.embed.downsample}"
            )
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(BLOCKS)}")
        kwargs = {"qkv_bias": qkv_bias, **(attn_kwargs or {})}
        self.blocks = nn.ModuleList(
            BLOCKS[block](dim, heads, mlp_ratio, attn, attn_defaults, drop_path=dp, mlp_bias=mlp_bias, **kwargs)
            for dp in drop_path_rates(drop_path_rate, depth)
        )
        if head_neuron:
            self.head_neuron = LIF()
        self.head = nn.Linear(dim, num_classes)

    def blocks_for_checkpointing(self) -> list[nn.Module]:
        """The encoder blocks (the protocol of :mod:`spikformers.memory`)."""
        return list(self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (timm's name); see :func:`spikformers.memory.checkpoint_blocks`."""
        checkpoint_blocks(self, enable)

    def time_chunk_refusal(self) -> str | None:
        """None: every step's features depend on earlier steps through the neurons only, so T runs in chunks
        (:func:`spikformers.memory.chunked_forward`)."""
        return None

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as ``[T, B, C, H, W]``, or raise naming the expected and found shape."""
        return time_input(x, self.T, self.in_chans, self.img_size, type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block, ``[T, B, N, D]``."""
        x = self.embed(self.check_input(x))
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[T, B, N, D]`` -> logits ``[B, K]``: mean over tokens, [head LIF,] mean over time, Linear."""
        x = x.mean(2)
        if hasattr(self, "head_neuron"):
            x = self.head_neuron(x)
        return self.head(x.mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
