"""Typed model outputs for models that produce more than one set of logits in training.

A model returns a plain ``[B, K]`` logits tensor in evaluation mode. In training mode a model with several
passes (SpiLiFormer's feedback) returns :class:`WeightedLogits`; the trainer's loss reads it without knowing
which model produced it: ``loss = sum(w_i * criterion(logits_i, target))``, accuracy uses ``.logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class WeightedLogits:
    """Logits of several passes with their loss weights; ``logits`` (the last pass) is the prediction."""

    passes: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]

    @property
    def logits(self) -> torch.Tensor:
        return self.passes[-1]

    def loss(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: torch.Tensor
             ) -> torch.Tensor:
        """``sum_i w_i * criterion(passes[i], target)``."""
        return sum(w * criterion(p, target) for p, w in zip(self.passes, self.weights))  # type: ignore[return-value]


def logits_of(output: torch.Tensor | WeightedLogits) -> torch.Tensor:
    """The prediction logits of any model output."""
    return output.logits if isinstance(output, WeightedLogits) else output


def output_loss(
    output: torch.Tensor | WeightedLogits,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    target: torch.Tensor,
) -> torch.Tensor:
    """The training loss of any model output under ``criterion``."""
    if isinstance(output, WeightedLogits):
        return output.loss(criterion, target)
    return criterion(output, target)
