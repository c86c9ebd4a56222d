"""The key map every conversion goes through: one source tensor -> one target tensor, filled strictly.

A conversion (from a spikingjelly network, an official checkpoint, a state dict) lists :class:`KeyMap` entries and
the source keys it leaves out with a reason; :func:`fill_state_dict` then copies the tensors and refuses anything
incomplete: a source key neither used nor ignored, a target key not filled or filled twice, a shape that differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


class ConversionError(ValueError):
    """A network, checkpoint or key map with no exact spikformers equivalent."""


@dataclass(frozen=True)
class KeyMap:
    """One target tensor filled from one source tensor: ``target = squeeze(rows part of source)``.

    ``part = (i, n)``: the i-th of n equal row blocks (a fused Q/K/V projection and its batch norm); a 0-d tensor
    (``num_batches_tracked``) is copied whole. ``squeeze``: a kernel of ones dropped, ``Conv1d`` ``[O, I, 1]`` or
    ``Conv2d`` ``[O, I, 1, 1]`` -> ``Linear`` ``[O, I]``.
    """

    source: str
    target: str
    part: tuple[int, int] = (0, 1)
    squeeze: bool = False

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The source tensor (or its gradient) as the target holds it."""
        i, n = self.part
        if n > 1 and tensor.dim() > 0:
            if tensor.shape[0] % n:
                raise ConversionError(f"{self.source}: {tuple(tensor.shape)} does not split into {n} row blocks")
            tensor = tensor.chunk(n, 0)[i]
        if self.squeeze:
            if tensor.dim() < 3 or any(s != 1 for s in tensor.shape[2:]):
                raise ConversionError(f"{self.source}: expected a 1x1 kernel, got shape {tuple(tensor.shape)}")
            tensor = tensor.flatten(1)
        return tensor


def fill_state_dict(keys: list[KeyMap], ignored: dict[str, str], source: dict[str, torch.Tensor],
                    model: nn.Module, what: str = "the source") -> None:
    """Load ``model`` from ``source`` through ``keys``, strictly: every source key used or in ``ignored``, every
    target key filled exactly once, shapes equal. Raises :class:`ConversionError` naming what is wrong; the model
    is left untouched then. ``what`` names the source in messages."""
    dst_sd = model.state_dict()
    filled: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    shapes: list[str] = []
    for km in keys:
        if km.source not in source:
            raise ConversionError(f"key map names {km.source}, which {what} does not have")
        if km.target not in dst_sd:
            raise ConversionError(f"{km.source} -> {km.target}: the spikformers model has no {km.target} "
                                  "(a bias or norm one side has and the other not)")
        if km.target in filled:
            raise ConversionError(f"{km.target} is filled twice (second time from {km.source})")
        value = km.apply(source[km.source])
        if value.shape != dst_sd[km.target].shape:
            shapes.append(f"{km.source} {tuple(value.shape)} -> {km.target} {tuple(dst_sd[km.target].shape)}")
        filled[km.target] = value
        used.add(km.source)
    unused = sorted(set(source) - used - set(ignored))
    unfilled = sorted(set(dst_sd) - set(filled))
    problems = [f"incomplete key map: source keys unused {_short(unused)}; target keys unfilled {_short(unfilled)}"
                ] if unused or unfilled else []
    if shapes:
        problems.append(f"shapes differ: {_short(shapes)}")
    if problems:
        raise ConversionError("; ".join(problems))
    model.load_state_dict({k: v.to(dst_sd[k].dtype) for k, v in filled.items()}, strict=True)


def _short(keys: list[str], limit: int = 12) -> str:
    """A key list for a message: all of a short one, the first ``limit`` and a count of a long one."""
    return str(keys) if len(keys) <= limit else f"{keys[:limit]} ... and {len(keys) - limit} more"


def summarize(keys: list[KeyMap]) -> list[str]:
    """The key map in a few lines, one per source module, block indices folded:
    ``block.N.attn.q_conv -> blocks.N.attn.q.linear (1x1 conv -> linear; 4 tensors)``."""
    groups: dict[tuple[str, str], list[KeyMap]] = {}
    for km in keys:
        src, dst = (fold(k.rsplit(".", 1)[0] if "." in k else k) for k in (km.source, km.target))
        groups.setdefault((src, dst), []).append(km)
    lines = []
    for (src, dst), kms in groups.items():
        notes = ["1x1 conv -> linear"] if any(k.squeeze for k in kms) else []
        if kms[0].part[1] > 1:
            notes.append(f"row block {kms[0].part[0] + 1} of {kms[0].part[1]}")
        notes.append(f"{len(kms)} tensor{'s' if len(kms) > 1 else ''}")
        lines.append(f"{src} -> {dst} ({'; '.join(notes)})")
    return lines


def fold(key: str) -> str:
    """A key with its block index written N: ``block.3.attn`` -> ``block.N.attn`` (also ``blocks``, ``stageS``)."""
    return re.sub(r"^(blocks?|stage\d)\.\d+(?=\.|$)", r"\1.N", key)
