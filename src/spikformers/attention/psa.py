"""PSA: SSA that uses only partial information, after EST (arXiv 2210.01208 v1).

EST states that its self-attention "utilizes only partial input signals" and cuts attention FLOPs by 49.8%,
but its exact selection rule is not public. This module implements PSA as SSA with a partial-information mask
of ratio ``r``, in one of two named modes (our documented choice, see ``docs/attention.md``):

``mode="random"`` (the rule of the authors' follow-up, Masked Spiking Transformer, same arXiv number v2):

    Q' = Q * (rand > r),  K' = K * (rand > r)                       Bernoulli masks on the Q and K spikes
    A  = (Q' K'^T) * (rand > r)                                     and on the attention map (not on V)
    out = LIF(BN(LIF_{0.5}(A V * scale) W_o + b_o))

  The masks are resampled from the global RNG on every training forward; in evaluation they come from a
  ``torch.Generator`` seeded with ``seed`` at every call, so inference is reproducible (the masks depend on
  the input's shape, batch size included; layers built with the same seed and shapes draw the same masks).

``mode="structured"``: per head a fixed, evenly spread subset S of ``round((1 - r) d)`` of the d channels is
kept in Q and K (head h's subset is shifted by h so that heads keep different channels):

    A = Q_S (K_S^T V) * scale                                        [N, |S|] x ([|S|, N] x [N, d])

  This costs ``2 N |S| d`` instead of SSA's ``2 N d d`` multiply-accumulates per head: the saved operations
  are exact, ``1 - |S| / d`` (about r). Q and K keep their full projections (same parameters as SSA).

With ``ratio=0`` both modes are SSA exactly (same weights give identical outputs).
"""

from __future__ import annotations

import torch

from .base import attention_product
from .ssa import SSA

PSA_MODES = ("random", "structured")


def structured_channels(d: int, heads: int, ratio: float) -> torch.Tensor:
    """Indices ``[heads, round((1 - ratio) d)]`` of the channels each head keeps, evenly spread, shifted by head."""
    keep = max(1, round((1.0 - ratio) * d))
    base = torch.div(torch.arange(keep) * d, keep, rounding_mode="floor")  # evenly spread in [0, d)
    return torch.stack([(base + h) % d for h in range(heads)]).sort(dim=1).values


class PSA(SSA):
    """Partial-information spiking self-attention ``[T, B, N, dim] -> [T, B, N, dim]`` (EST; see module doc).

    Args (beyond :class:`SSA`'s):
        ratio: fraction r of the information dropped, in [0, 1).
        mode: ``"random"`` (Bernoulli masks on Q, K and the attention map) or ``"structured"`` (fixed channel
            subset of Q and K per head; exact, countable savings).
        seed: seed of the evaluation-mode masks in ``"random"`` mode.
        proj_neuron: end with the output projection's LIF; False leaves it out, so the output is the projection's
            batch-norm output (the membrane-shortcut block asks for that, :class:`SSA`).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        qkv_bias: bool = False,
        scale: float = 0.125,
        attn_v_th: float = 0.5,
        order: str = "auto",
        ratio: float = 0.5,
        mode: str = "random",
        seed: int = 0,
        proj_neuron: bool = True,
    ) -> None:
        super().__init__(dim, heads, qkv_bias, scale, attn_v_th, order, proj_neuron=proj_neuron)
        if mode not in PSA_MODES:
            raise ValueError(f"PSA mode must be one of {PSA_MODES}, got {mode!r}")
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"PSA ratio must be in [0, 1), got {ratio}")
        self.ratio, self.mode, self.seed = float(ratio), mode, int(seed)
        # not persistent: the state dict stays SSA's, so SSA and PSA checkpoints load into each other
        self.register_buffer("keep", structured_channels(dim // heads, heads, ratio), persistent=False)

    def product(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The (unscaled) attention product ``[T, B, heads, N, d]`` of head-split spikes under this mode's mask."""
        if self.ratio == 0.0:
            return attention_product(q, k, v, self.order)
        if self.mode == "structured":
            idx = self.keep[:, None, :].expand(*q.shape[:-1], self.keep.shape[1])  # [T, B, heads, N, |S|]
            q_s, k_s = q.gather(-1, idx), k.gather(-1, idx)
            return q_s @ (k_s.transpose(-2, -1) @ v)
        gen = None
        if not self.training:
            gen = torch.Generator(device=q.device)
            gen.manual_seed(self.seed)

        def mask(x: torch.Tensor) -> torch.Tensor:
            return x * (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) > self.ratio)

        return mask(mask(q) @ mask(k).transpose(-2, -1)) @ v

    def time_chunk_refusal(self) -> str | None:
        """Why a model holding this module cannot run T in chunks (random masks drawn for the whole input's shape),
        or None (structured mode, or ratio 0)."""
        if self.mode == "random" and self.ratio > 0:
            return (f"PSA(mode='random', ratio={self.ratio}); its evaluation masks depend on the whole input's "
                    "shape, so chunks would draw different masks")
        return None

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, mode={self.mode!r}, seed={self.seed}"
