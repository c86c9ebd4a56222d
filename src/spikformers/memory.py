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
- :func:`keep_freed_memory` (CPU, glibc): large freed blocks stay in the process for reuse instead of being
  mapped afresh, and faulted in page by page, at every allocation (``train.keep_freed_memory``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .neurons.state import carry_membrane

__all__ = ["backbone_blocks", "checkpoint_blocks", "check_chunkable", "chunked_forward", "keep_freed_memory",
           "recompute_bn_neurons", "CHUNK_UNSUPPORTED"]

CHUNK_UNSUPPORTED = (
    "SpiLiFormer's two-pass forward (its feedback is computed from the first pass over all T), "
    "PSA with mode='random' and ratio > 0 (evaluation masks are drawn for the whole input shape), "
    "training mode (batch-norm statistics would pool over one chunk), and backbones other than Spikformer / HST"
)


def keep_freed_memory(max_bytes: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed blocks of up to ``max_bytes`` for reuse; True where applied, False elsewhere.

    glibc maps every allocation above its mmap threshold (which it raises to 32 MB at most) afresh and unmaps it
    on free, so each large tensor of every step costs the kernel a page fault and a zeroed page per 4 KB on first
    touch: at T = 16 that was most of the fused LIF's time (``benchmarks/README.md``). Raising the mmap and trim
    thresholds keeps such blocks in the heap. Process-wide and for the life of the process; numbers do not change
    (torch aligns its buffers the same either way); the process's resident memory stays near its peak instead
    of shrinking between steps. A no-op (False) without glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(max_bytes), 2**31 - 1)
    return mallopt(M_MMAP_THRESHOLD, value) == 1 and mallopt(M_TRIM_THRESHOLD, value) == 1


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a backbone: ``model.blocks`` (Spikformer) or every block of ``model.stages()`` (HST)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return list(blocks)
    stages = getattr(model, "stages", None)
    if callable(stages):
        return [blk for stage in stages() for blk in stage]
    raise TypeError(f"{type(model).__name__} has neither `blocks` nor `stages()`; cannot find its blocks")


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
    """
    from .layers import ConvBNSpike, LinearBNSpike

    units = [m for m in model.modules() if isinstance(m, (LinearBNSpike, ConvBNSpike))]
    for m in units:
        m.recompute_bn_neuron = enabled
    return len(units)


def check_chunkable(model: nn.Module) -> None:
    """Raise (NotImplementedError, or RuntimeError in training mode) unless :func:`chunked_forward` can run
    ``model``: what it cannot run is listed in :data:`CHUNK_UNSUPPORTED`."""
    from .attention.psa import PSA
    from .models.hst import HST
    from .models.spikformer import Spikformer

    if hasattr(model, "forward_passes"):
        raise NotImplementedError(
            f"chunked_forward does not support {type(model).__name__}: its second pass depends on the first pass "
            f"over all T (unsupported: {CHUNK_UNSUPPORTED})"
        )
    if not isinstance(model, (Spikformer, HST)):
        raise NotImplementedError(f"chunked_forward supports Spikformer and HST backbones, got {type(model).__name__}")
    if model.training:
        raise RuntimeError("chunked_forward is for inference: call model.eval() first")
    for name, m in model.named_modules():
        if isinstance(m, PSA) and m.mode == "random" and m.ratio > 0:
            raise NotImplementedError(
                f"chunked_forward: {name} is PSA(mode='random', ratio={m.ratio}); its evaluation masks depend on "
                "the whole input's shape, so chunks would draw different masks"
            )


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
