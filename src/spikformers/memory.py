"""Memory savers that change no numbers: activation checkpointing per block, and inference over T in chunks.

- :func:`checkpoint_blocks` (also ``model.set_grad_checkpointing()``): each block keeps only its input during
  the forward pass and recomputes its activations in backward; gradients are unchanged and batch-norm running
  statistics are updated once (the recomputation restores them).
- :func:`chunked_forward`: evaluation forward over T in chunks of ``chunk`` steps, every neuron carrying its
  membrane from one chunk to the next inside :func:`~spikformers.neurons.state.carry_membrane` (cleared on exit),
  so peak activation memory scales with ``chunk`` instead of T and the logits equal the full-T forward's.
- :func:`recompute_bn_neurons`: batch norm + neuron of every linear/conv unit recomputed in backward, so each unit
  keeps only the norm's input.
- Compact spike inputs for backward and event-driven CPU products live in :mod:`spikformers.kernels.spike_ops`
  (switched by :func:`spikformers.kernels.kernel_config`).

They work on any model through a small protocol, never by its class (this module imports no layer, attention
mechanism or backbone):

- a backbone that can checkpoint its blocks defines ``blocks_for_checkpointing()`` (:class:`CheckpointBlocks`);
- a backbone that can run T in chunks defines ``check_input``, ``forward_features``, ``forward_head`` and
  ``time_chunk_refusal()`` returning None (:class:`TimeChunkable`); any module inside it may also define
  ``time_chunk_refusal()``, to say why the model cannot (PSA's random masks, say);
- a unit whose norm + neuron can be recomputed in backward has a boolean attribute ``recompute_bn_neuron``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .neurons.state import carry_membrane

__all__ = ["CheckpointBlocks", "TimeChunkable", "backbone_blocks", "checkpoint_blocks", "check_chunkable",
           "chunked_forward", "recompute_bn_neurons", "CHUNK_UNSUPPORTED"]

CHUNK_UNSUPPORTED = (
    "models whose modules refuse through time_chunk_refusal() (SpiLiFormer's two-pass forward: its feedback is "
    "computed from the first pass over all T; PSA with mode='random' and ratio > 0: evaluation masks are drawn for "
    "the whole input shape), training mode (batch-norm statistics would pool over one chunk), and models that do "
    "not define the time-chunk protocol (Spikformer and HST backbones do)"
)


class CheckpointBlocks(Protocol):
    """A backbone whose blocks :func:`checkpoint_blocks` can recompute in backward."""

    def blocks_for_checkpointing(self) -> Sequence[nn.Module]:
        """The blocks, each a module whose forward is recomputed as a whole, in the order they run."""
        ...


class TimeChunkable(Protocol):
    """A backbone :func:`chunked_forward` can run T steps at a time, its neurons carrying their membranes.

    ``forward_features`` must be causal in time: its output at step t depends on steps <= t only, and only through
    the neurons' membranes (no mean, norm statistics or mask over all T); ``forward_head`` must start with the mean
    over tokens (dim 2), which :func:`chunked_forward` takes per chunk.
    """

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[T, B, C, H, W]``."""
        ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[T, B, N, D]``."""
        ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[T, B, N, D]`` -> logits ``[B, K]``."""
        ...

    def time_chunk_refusal(self) -> str | None:
        """None when the model runs in time chunks with the same logits; else why it cannot."""
        ...


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a backbone (``model.blocks_for_checkpointing()``); a TypeError for a model without them."""
    blocks = getattr(model, "blocks_for_checkpointing", None)
    if not callable(blocks):
        raise TypeError(f"{type(model).__name__} does not define blocks_for_checkpointing(); cannot find its blocks")
    return list(blocks())


@contextlib.contextmanager
def _keep_bn_stats(module: nn.Module) -> Iterator[None]:
    """Restore every batch norm's running statistics on exit (the recomputation must not update them twice)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in bns]
    try:
        yield
    finally:
        for m, values in zip(bns, saved):
            bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
            with torch.no_grad():
                for b, v in zip(bufs, values):
                    b.copy_(v)


class _CheckpointedForward:
    """Instance-level ``forward`` that runs the class's forward under non-reentrant activation checkpointing."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.enabled = True

    def __call__(self, *args, **kwargs):
        m = self.module
        fwd = type(m).forward
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        needs = any(t.requires_grad for t in tensors) or any(p.requires_grad for p in m.parameters())
        if not (self.enabled and torch.is_grad_enabled() and needs):
            return fwd(m, *args, **kwargs)
        return checkpoint(fwd, m, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _keep_bn_stats(m)), **kwargs)


def checkpoint_blocks(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn activation checkpointing of every block of ``model`` on (or off); returns ``model``.

    Parameter names and the state dict are unchanged (the block's ``forward`` is wrapped on the instance).
    """
    for blk in backbone_blocks(model):
        wrapper = blk.__dict__.get("forward")
        if isinstance(wrapper, _CheckpointedForward):
            wrapper.enabled = enabled
        elif enabled:
            blk.forward = _CheckpointedForward(blk)
    return model


def recompute_in_backward(module: nn.Module, fn, *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)`` under non-reentrant checkpointing, with ``module``'s batch-norm statistics updated once."""
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _keep_bn_stats(module)))


def recompute_bn_neurons(model: nn.Module, enabled: bool = True) -> int:
    """Recompute batch norm + neuron of every linear/conv unit in backward (or stop); returns how many units.

    Each unit then keeps only the batch norm's input for backward: the norm's output, which a neuron with
    ``saved="recompute"`` would otherwise hold, is rebuilt. Outputs, gradients and statistics are unchanged.
    Units that fuse their norm with a LIF (:mod:`spikformers.kernels.bn_lif`, on by default on the CPU)
    keep only that input already; the flag matters for the others (CUDA, ternary neurons, fusion switched off).
    A unit is any module with a boolean ``recompute_bn_neuron`` attribute (the linear and conv units of
    :mod:`spikformers.layers`).
    """
    units = [m for m in model.modules() if isinstance(getattr(m, "recompute_bn_neuron", None), bool)]
    for m in units:
        m.recompute_bn_neuron = enabled
    return len(units)


def check_chunkable(model: nn.Module) -> None:
    """Raise (NotImplementedError, or RuntimeError in training mode) unless :func:`chunked_forward` can run
    ``model``: what it cannot run is listed in :data:`CHUNK_UNSUPPORTED`."""
    if not callable(getattr(model, "time_chunk_refusal", None)):
        raise NotImplementedError(
            f"chunked_forward: {type(model).__name__} does not declare that it runs in time chunks (a backbone "
            "defines time_chunk_refusal(), as Spikformer and HST do)"
        )
    for name, m in model.named_modules():
        refusal = m.time_chunk_refusal() if callable(getattr(m, "time_chunk_refusal", None)) else None
        if refusal is not None:
            where = f" (module {name})" if name else ""
            raise NotImplementedError(f"chunked_forward does not support {type(model).__name__}: {refusal}{where}")
    if model.training:
        raise RuntimeError("chunked_forward is for inference: call model.eval() first")


@torch.no_grad()
def chunked_forward(model: nn.Module, x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Evaluation logits ``[B, K]`` of ``model`` on ``x`` (``[B, C, H, W]`` or ``[T, B, C, H, W]``), T in chunks.

    Equal to ``model(x)`` in eval mode; peak activation memory is that of a ``chunk``-step forward.
    Not supported (raises): see :data:`CHUNK_UNSUPPORTED`.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    check_chunkable(model)
    x = model.check_input(x)
    pooled = []
    with carry_membrane() as store:
        for t0 in range(0, x.shape[0], chunk):
            store.next_chunk()
            pooled.append(model.forward_features(x[t0:t0 + chunk]).mean(2))  # [chunk, B, D]
    return model.forward_head(torch.cat(pooled).unsqueeze(2))  # one token per step: its mean is itself
