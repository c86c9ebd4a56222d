"""Hierarchical spiking transformer (QKFormer's HST) and SpiLiFormer on top of it (docs/models.md).

    x [B, C, H, W] or [T, B, C, H, W]
    -> patch_embed1 -> stage1 (token attention blocks)          [T, B, N1, D/4]   (DVS: two stages, D/2, D)
    -> patch_embed2 -> stage2                                   [T, B, N2, D/2]
    -> patch_embed3 -> stage3 (last stage, SSA / FB-LiDiff)     [T, B, N3, D]
    -> mean over tokens, mean over T, Linear                    logits [B, num_classes]

Patch embeddings run on ``[T, B, C, H, W]`` (convs with T folded into the batch, max-pool between BN and LIF);
blocks run on tokens ``[T, B, N, C]`` (``x + Attn(x)``, then ``x + MLP(x)``; no norms; optional per-sample
drop-path on both branches, ``drop_path_rate`` ramped linearly over all blocks of all stages).
SpiLiFormer adds a feedback generator and a second pass over the last stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention import create_attention
from ..layers import MLP, ConvBN, DropPath, drop_path_rates, max_pool, time_input
from ..memory import checkpoint_blocks
from ..neurons import LIF
from ..outputs import WeightedLogits

# Per embedding variant (docs/models.md, "Patch embeddings"): the stem's channel fractions of E (input first),
# which of its convs pool, the step whose output feeds the 1x1 shortcut (-1: the input) and that shortcut's
# stride; then which of the two 3x3 convs of a stage embedding pools. ``stages``: number of stages.
EMBEDS: dict[str, dict[str, Any]] = {
    "imagenet": dict(stem=(0.5, 1, 1), stem_pools=(True, True, False), stem_res=0, stem_stride=2,
                     stage_pools=(True, False), stages=3),
    "cifar": dict(stem=(0.5, 1), stem_pools=(False, False), stem_res=0, stem_stride=1,
                  stage_pools=(False, True), stages=3),
    "dvs": dict(stem=(0.125, 0.25, 0.5, 1), stem_pools=(False, True, True, True), stem_res=1, stem_stride=4,
                stage_pools=(False, True), stages=2),
}  # fmt: skip


class ConvBNPoolSpike(nn.Module):
    """``Conv -> BN -> [MaxPool] -> LIF`` on ``[T, B, C, H, W]`` (HST pools the membrane input, not spikes).

    ``bias``: a bias on the conv (none in the official code; spikingjelly's QKFormer has one).
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1, pool: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = ConvBN(in_chans, out_chans, kernel_size, stride, bias=bias)
        self.pool = pool
        self.neuron = LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.neuron(max_pool(x) if self.pool else x)


class PatchEmbed(nn.Module):
    """A chain of 3x3 ``ConvBNPoolSpike`` plus a 1x1 strided spiking shortcut, summed: ``[T,B,C,H,W] -> [T,B,E,h,w]``.

    ``widths = [C_in, c_1, ..., E]``; ``shortcut_from`` = index of the conv whose output feeds the shortcut
    (-1: the input itself); ``bias``: biases on every conv.
    """

    def __init__(
        self, widths: list[int], pools: tuple[bool, ...], shortcut_from: int, shortcut_stride: int,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvBNPoolSpike(widths[i], widths[i + 1], pool=p, bias=bias) for i, p in enumerate(pools)
        )
        self.shortcut_from = shortcut_from
        self.shortcut = ConvBNPoolSpike(widths[shortcut_from + 1], widths[-1], 1, shortcut_stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == self.shortcut_from:
                a = x
        return x + self.shortcut(a)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W] -> [T, B, H*W, C]`` (row-major tokens)."""
    return x.flatten(3).transpose(2, 3)


def _image(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[T, B, H*W, C] -> [T, B, C, H, W]``."""
    return x.transpose(2, 3).unflatten(3, grid)


class HSTBlock(nn.Module):
    """HST block on tokens ``[T, B, N, C]``: ``x + Attn(x[, feedback])``, then ``x + MLP(x)``."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, attn: str | type[nn.Module], drop_path: float = 0.0,
        **attn_kwargs: Any,
    ) -> None:
        super().__init__()
        self.attn = create_attention(attn, dim, heads, **attn_kwargs)
        self.mlp = MLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x) if feedback is None else self.attn(x, feedback=feedback))
        return x + self.drop_path(self.mlp(x))


def stage_depths(variant: str, depth: int) -> tuple[int, ...]:
    """Blocks per stage for a total ``depth``: early stages as published (1, 2 / 1, 1 / 1), the rest last.

    ImageNet 10 -> (1, 2, 7), CIFAR 4 -> (1, 1, 2), DVS 2 -> (1, 1). Smaller depths drop early blocks first
    so that the last stage keeps at least one block (CIFAR 2 -> (1, 0, 1)).
    """
    early = {"imagenet": [1, 2], "cifar": [1, 1], "dvs": [1]}[variant]
    if depth < 1:
        raise ValueError(f"HST depth must be >= 1, got {depth}")
    budget, out = depth - 1, []
    for n in early:
        out.append(min(n, budget))
        budget -= out[-1]
    return (*out, depth - sum(out))


class HST(nn.Module):
    """Hierarchical spiking transformer (QKFormer HST): 3 stages (2 for DVS), widths D/4, D/2, D (D/2, D).

    Args:
        img_size, in_chans, num_classes: input and output. T: time steps a static image is repeated over.
        dim: width D of the last stage; depth: total blocks, split by :func:`stage_depths` unless ``depths``.
        heads: heads in every stage, or one count per stage; mlp_ratio: MLP hidden = ratio * width.
        embed: patch-embedding variant (``"imagenet"``, ``"cifar"``, ``"dvs"``, docs/models.md "Patch embeddings").
        attn_early / attn_last: attention of the early stages / the last stage, names or classes, with options
            ``attn_early_kwargs`` / ``attn_last_kwargs``. Defaults: QKFormer's token attention and SSA.
        drop_path_rate: stochastic depth of the last block; over all blocks of all stages in order, block i gets
            ``rate * i / (depth - 1)`` (timm's linear ramp), per sample on both residual branches, in training.
        conv_bias: biases on the patch embeddings' convs (none in the official code; spikingjelly's QKFormer has
            them).

    Shape: ``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        num_classes: int = 10,
        dim: int = 384,
        depth: int = 4,
        heads: int | tuple[int, ...] = 8,
        mlp_ratio: float = 4.0,
        T: int = 4,
        embed: str = "cifar",
        depths: tuple[int, ...] | None = None,
        attn_early: str | type[nn.Module] = "ff_lidiff",
        attn_last: str | type[nn.Module] = "ssa",
        attn_early_kwargs: dict[str, Any] | None = None,
        attn_last_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float = 0.0,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        if embed not in EMBEDS:
            raise ValueError(f"unknown HST embedding variant {embed!r}; expected one of {sorted(EMBEDS)}")
        spec = EMBEDS[embed]
        S = spec["stages"]
        depths = tuple(depths) if depths is not None else stage_depths(embed, depth)
        if len(depths) != S or sum(depths) != depth:
            raise ValueError(f"depths {depths} must have {S} entries summing to depth {depth} for embed={embed!r}")
        stage_heads = (heads,) * S if isinstance(heads, int) else tuple(heads)
        if len(stage_heads) != S:
            raise ValueError(f"heads {heads} must be one count or {S} counts (one per stage) for embed={embed!r}")
        unit = 2 ** (S - 1) * round(1 / min(spec["stem"]))  # the narrowest stem conv has dim / unit channels
        if dim % unit:
            raise ValueError(f"HST dim must be divisible by {unit} for embed={embed!r}, got {dim}")
        self.T, self.img_size, self.in_chans, self.num_classes = T, img_size, in_chans, num_classes
        self.num_stages, self.depths = S, depths
        self.widths = [dim // 2 ** (S - 1 - i) for i in range(S)]
        rates = drop_path_rates(drop_path_rate, depth)
        if attn_early == "ff_lidiff" and attn_early_kwargs is None:
            attn_early_kwargs = {"q_split": False}  # plain QKFormer token attention
        for i, width in enumerate(self.widths):
            if i == 0:
                chans = [in_chans] + [int(width * f) for f in spec["stem"]]
                emb = PatchEmbed(chans, spec["stem_pools"], spec["stem_res"], spec["stem_stride"], bias=conv_bias)
            else:
                emb = PatchEmbed([width // 2, width, width], spec["stage_pools"], -1, 2, bias=conv_bias)
            last = i == S - 1
            attn, kwargs = (attn_last, attn_last_kwargs) if last else (attn_early, attn_early_kwargs)
            first = sum(depths[:i])
            blocks = nn.ModuleList(
                HSTBlock(width, stage_heads[i], mlp_ratio, attn, drop_path=rates[first + j], **(kwargs or {}))
                for j in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", emb)
            setattr(self, f"stage{i + 1}", blocks)
        self.downsample = 2 ** (sum(spec["stem_pools"]) + S - 1)
        if img_size % self.downsample:
            raise ValueError(
                f"img_size {img_size} is not divisible by the {embed} HST downsampling factor {self.downsample}"
            )
        self.head = nn.Linear(dim, num_classes)

    def embeds(self) -> list[nn.Module]:
        """``[patch_embed1, patch_embed2, ...]``."""
        return [getattr(self, f"patch_embed{i + 1}") for i in range(self.num_stages)]

    def stages(self) -> list[nn.ModuleList]:
        """``[stage1, stage2, ...]``, each a list of blocks."""
        return [getattr(self, f"stage{i + 1}") for i in range(self.num_stages)]

    def blocks_for_checkpointing(self) -> list[nn.Module]:
        """Every block of every stage, in order (the protocol of :mod:`spikformers.memory`)."""
        return [blk for stage in self.stages() for blk in stage]

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

    def forward_to_last_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the last stage's blocks: the output of the last patch embedding, ``[T, B, N, D]``."""
        x = self.check_input(x)
        embeds, stages = self.embeds(), self.stages()
        for i in range(self.num_stages):
            x = embeds[i](x)
            if i == self.num_stages - 1:
                return _tokens(x)
            grid = (x.shape[-2], x.shape[-1])
            x = _tokens(x)
            for blk in stages[i]:
                x = blk(x)
            x = _image(x, grid)
        raise AssertionError("unreachable")

    def forward_last_stage(self, x: torch.Tensor, feedback: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Last-stage blocks on tokens ``[T, B, N, D]``; block i gets ``feedback[i]`` when given."""
        for i, blk in enumerate(self.stages()[-1]):
            x = blk(x, None if feedback is None else feedback[i])
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[T, B, N, D]`` -> logits ``[B, K]``: mean over tokens, mean over time, Linear."""
        return self.head(x.mean(2).mean(0))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block, ``[T, B, N, D]``."""
        return self.forward_last_stage(self.forward_to_last_stage(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FeedbackDecoder(nn.Module):
    """One decoder of the feedback chain, ``[T, B, N, C] -> spikes [T, B, N, C]`` (docs/models.md, "Feedback").

    ``norm="bn"``: Linear (no bias) -> BN -> LIF (ImageNet, CIFAR-10, N-Caltech101); ``"bn_first"``:
    BN -> Linear -> LIF (CIFAR-100); ``"none"``: Linear -> LIF (CIFAR10-DVS).
    """

    def __init__(self, dim: int, norm: str = "bn") -> None:
        super().__init__()
        if norm not in ("bn", "bn_first", "none"):
            raise ValueError(f"decoder norm must be 'bn', 'bn_first' or 'none', got {norm!r}")
        self.norm = norm
        self.linear = nn.Linear(dim, dim, bias=False)
        if norm != "none":
            self.bn = nn.BatchNorm1d(dim)
        self.neuron = LIF()

    def _bn(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "bn_first":
            x = self._bn(x)
        x = self.linear(x)
        if self.norm == "bn":
            x = self._bn(x)
        return self.neuron(x)


class FeedbackGenerator(nn.Module):
    """Feedback for each last-stage block from the last-stage output ``x: [T, B, N, C]`` (docs/models.md).

    ``m_i = clamp(cos(x, P_i), 0, 1)`` per token with two learnable prompts ``P_i ~ N(0, 1)``;
    ``z = aug * (x * m_1 - x * m_2)``; then a chain of decoders, one per block, each feeding the next.
    ``order="forward"``: decoders 0, 1, ... in turn, block i gets the output after decoder i (ImageNet);
    ``"reverse"``: decoders K-1, ..., 0, block i gets decoder i's output (CIFAR, DVS code).
    ``raw_reshape``: official quirk Q2 (docs/models.md, "Official quirks"), each decoder output's N x C block is
    read as C x N.
    """

    def __init__(
        self, dim: int, num_blocks: int, order: str = "forward", norm: str = "bn", aug: float = 1.0,
        raw_reshape: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if order not in ("forward", "reverse"):
            raise ValueError(f"decoder order must be 'forward' or 'reverse', got {order!r}")
        self.order, self.aug, self.raw_reshape = order, aug, raw_reshape
        self.prompt1 = nn.Parameter(torch.randn(dim))
        self.prompt2 = nn.Parameter(torch.randn(dim))
        self.decoders = nn.ModuleList(FeedbackDecoder(dim, norm) for _ in range(num_blocks))

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token masks ``m_1, m_2: [T, B, N, 1]`` = clamped cosine similarity with each prompt."""
        m1 = torch.nn.functional.cosine_similarity(x, self.prompt1, dim=-1).clamp(0, 1)
        m2 = torch.nn.functional.cosine_similarity(x, self.prompt2, dim=-1).clamp(0, 1)
        return m1.unsqueeze(-1), m2.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m1, m2 = self.masks(x)
        z = (x * m1 - x * m2) * self.aug
        K = len(self.decoders)
        out: list[torch.Tensor] = [z] * K
        for i in range(K) if self.order == "forward" else reversed(range(K)):
            z = self.decoders[i](z)
            if self.raw_reshape:
                T, B, N, C = z.shape
                z = z.reshape(T, B, C, N).transpose(2, 3)
            out[i] = z
        return out


class SpiLiFormer(HST):
    """SpiLiFormer (Zheng et al., ICCV 2025): HST with FF-LiDiff early stages, FB-LiDiff last stage, feedback.

    Forward runs two passes. Pass 1: the full network gives logits1; the feedback generator turns the last
    stage's output into one feedback tensor per last-stage block. Pass 2: only the last stage is re-run from its
    saved (not detached) input, block i getting ``feedback[i]`` in its value path; the same head gives logits2.
    In training mode the model returns ``WeightedLogits(passes=(logits1, logits2), weights=(1 - beta, beta))``
    (loss ``(1 - beta) CE(logits1) + beta CE(logits2)``); in eval mode it returns logits2 ``[B, K]`` only.

    Args (beyond :class:`HST`'s):
        q_split: FF-LiDiff's Q split (False: QKFormer token attention, the DVS / N-Caltech101 code).
        doubled_kv: FB-LiDiff's doubled K/V head-pair difference (the CIFAR10-DVS file); off by default.
        decoder_order, decoder_norm, aug: feedback generator options (see :class:`FeedbackGenerator`).
        beta: weight of the second pass in the training loss (0.8 CIFAR / ImageNet, 0.5 DVS).
        official_quirks: reproduce the official code's reshaping accidents (docs/models.md, "Official quirks"):
            Q1 (FB projection LIF over the folded T*B axis) everywhere, Q2 (raw decoder reshape) in the
            Linear-first reverse-order decoders of the CIFAR-10 / DVS / N-Caltech101 files. Parameter counts are
            the same either way.
    """

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        num_classes: int = 100,
        dim: int = 384,
        depth: int = 4,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        T: int = 4,
        embed: str = "cifar",
        depths: tuple[int, ...] | None = None,
        q_split: bool = True,
        doubled_kv: bool = False,
        decoder_order: str = "reverse",
        decoder_norm: str = "bn_first",
        aug: float = 2.0,
        beta: float = 0.8,
        official_quirks: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size, in_chans, num_classes, dim, depth, heads, mlp_ratio, T, embed, depths,
            attn_early="ff_lidiff", attn_last="fb_lidiff",
            attn_early_kwargs={"q_split": q_split},
            attn_last_kwargs={"doubled_kv": doubled_kv, "fold_proj_lif": official_quirks},
            drop_path_rate=drop_path_rate,
        )  # fmt: skip
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta
        raw = official_quirks and decoder_order == "reverse" and decoder_norm != "bn_first"
        self.feedback = FeedbackGenerator(dim, self.depths[-1], decoder_order, decoder_norm, aug, raw_reshape=raw)

    def time_chunk_refusal(self) -> str | None:
        """The second pass cannot run in time chunks: its feedback is computed from the first pass over all T."""
        return "its second pass depends on the first pass over all T (the feedback is computed from it)"

    def forward_passes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both passes: ``(logits1, logits2)``, each ``[B, K]``."""
        tmp = self.forward_to_last_stage(x)
        y1 = self.forward_last_stage(tmp)
        y2 = self.forward_last_stage(tmp, self.feedback(y1))
        return self.forward_head(y1), self.forward_head(y2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | WeightedLogits:  # type: ignore[override]
        logits1, logits2 = self.forward_passes(x)
        if self.training:
            return WeightedLogits(passes=(logits1, logits2), weights=(round(1.0 - self.beta, 12), self.beta))
        return logits2
