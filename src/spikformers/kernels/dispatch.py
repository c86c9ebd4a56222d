"""The fused neuron paths' dispatcher: which implementation runs a call, and the call itself.

:func:`select_impl` picks the implementation module for a backend and a tensor (C++ on the CPU, Triton on CUDA,
eager torch elsewhere); :func:`run_neuron` runs a whole multi-step call through it: with autograd as one node
(:mod:`.node`) that saves only the compact state of :mod:`.common`, without autograd (inference,
``torch.no_grad``, inputs not requiring grad) saving nothing at all. Each Triton variant is checked against the
reference loop on its first call (:mod:`.selfcheck`) and replaced by the eager path if wrong.
"""

from __future__ import annotations

import threading
import weakref
from types import ModuleType

import torch

from . import cpp, eager, selfcheck
from .common import NeuronParams, choose_save, triton_importable, triton_interpret
from .config import get_kernel_config
from .node import NeuronFunction

BACKENDS = ("auto", "cpp", "triton", "eager", "reference")


def _triton_impl() -> ModuleType:
    from . import triton

    return triton


def select_impl(x: torch.Tensor, backend: str) -> ModuleType:
    """The implementation module that runs ``backend`` for tensor ``x`` (``auto``: the best for its device)."""
    if backend == "auto":
        if x.is_cuda and x.dtype != torch.float64 and triton_importable():
            return _triton_impl()
        if cpp.supports(x):
            return cpp
        return eager
    if backend == "cpp":
        if not cpp.supports(x):
            raise RuntimeError(
                f"backend 'cpp' needs a CPU float32/float64 tensor and a built library; got {x.device}/{x.dtype}"
                + (f" ({cpp.error})" if cpp.error else "")
            )
        return cpp
    if backend == "triton":
        if not triton_importable():
            raise RuntimeError("backend 'triton' needs the triton package")
        if not (x.is_cuda or triton_interpret()):
            raise RuntimeError("backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        return _triton_impl()
    if backend == "eager":
        return eager
    raise ValueError(f"unknown neuron backend {backend!r}; expected one of {BACKENDS}")


_scratch = threading.local()


def mark_scratch(x: torch.Tensor) -> torch.Tensor:
    """Mark ``x`` as a scratch input of the next neuron call: at inference the compiled CPU kernel may then write
    its spikes over ``x`` instead of into a new tensor. Only for tensors nobody reads again (a batch norm's output
    inside a unit). Returns ``x``."""
    _scratch.ref = weakref.ref(x)
    return x


def _take_scratch(x: torch.Tensor) -> bool:
    """Whether ``x`` is the tensor :func:`mark_scratch` marked (and the ``overwrite_scratch`` switch of
    :mod:`.config` is on, ``observable`` off); clears the mark either way."""
    ref = getattr(_scratch, "ref", None)
    _scratch.ref = None
    cfg = get_kernel_config()
    return cfg.overwrite_scratch and not cfg.observable and ref is not None and ref() is x


def run_neuron(
    x: torch.Tensor, kind: str, params: NeuronParams, backend: str = "auto", saved: str = "auto",
    v_init: torch.Tensor | None = None, return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run neuron ``kind`` (``lif``, ``ternary_lif``, ``ternary_guo``) over ``x: [T, ...]`` on a fused path.

    ``v_init: [...]`` starts from that membrane instead of rest; ``return_v`` also returns the final membrane
    ``[...]`` (in the compute dtype). Both are for inference (T in chunks): with autograd they raise.
    """
    stateful = v_init is not None or return_v
    scratch = _take_scratch(x)
    if x.dim() < 1 or x.shape[0] == 0 or x.numel() == 0:
        if not stateful:
            return x.clone()
        rest = params.v_reset if kind == "lif" else 0.0
        v = v_init.clone() if v_init is not None else torch.full(x.shape[1:], rest, dtype=x.dtype, device=x.device)
        return x.clone(), v
    impl = select_impl(x, backend)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute).contiguous()
    if torch.is_grad_enabled() and xc.requires_grad:
        if stateful:
            raise NotImplementedError(
                "carrying the membrane between calls (v_init / return_v) is inference-only on the fused backends; "
                "run under torch.no_grad() or use backend='reference'"
            )
        if saved == "auto" and getattr(impl, "RECOMPUTES", False):
            saved = "recompute"  # C++: rebuilding the membrane is cheaper than storing the surrogate
        save = choose_save(kind, compute, params.detach_reset, saved)
        impl = selfcheck.guard(impl, xc, kind, params, save)  # Triton: checked once per variant, else eager
        out = NeuronFunction.apply(xc, kind, params, save, impl)
        return out if out.dtype == x.dtype else out.to(x.dtype)
    v0 = None
    if v_init is not None:
        if tuple(v_init.shape) != tuple(x.shape[1:]):
            raise ValueError(f"v_init must have the per-step shape {tuple(x.shape[1:])}, got {tuple(v_init.shape)}")
        v0 = v_init.detach().to(device=x.device, dtype=compute).contiguous()
    v_final = torch.empty(x.shape[1:], dtype=compute, device=x.device) if return_v else None
    impl = selfcheck.guard(impl, xc, kind, params, "none", v0 is not None, return_v)
    if getattr(impl, "OVERWRITES", False) and (scratch or xc is not x):  # spikes over a private input: no new tensor
        out, _ = impl.forward(xc, kind, params, "none", v0, v_final, overwrite=True)
    else:
        out, _ = impl.forward(xc, kind, params, "none", v0, v_final)
    out = out if out.dtype == x.dtype else out.to(x.dtype)
    return (out, v_final) if return_v else out

