"""One autograd node for a whole multi-step neuron call, over any implementation (C++, Triton, eager torch).

Forward runs all T steps in one kernel and saves only the compact state of :mod:`.common` through
``ctx.save_for_backward``; backward walks the steps in reverse from that state. Without autograd
(inference, ``torch.no_grad``, inputs not requiring grad) nothing is saved at all.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import cpu, eager
from .common import NeuronParams, choose_save

BACKENDS = ("auto", "fused", "cpp", "triton", "eager", "reference")


def triton_importable() -> bool:
    """True when ``import triton`` works (checked without importing the Triton kernels themselves)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no Triton
        return False
    return True


def triton_interpret() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _triton_impl() -> ModuleType:
    from . import gpu

    return gpu


def select_impl(x: torch.Tensor, backend: str) -> ModuleType:
    """The implementation module that runs ``backend`` for tensor ``x`` (``auto``/``fused``: best for its device)."""
    if backend in ("auto", "fused"):
        if x.is_cuda and x.dtype != torch.float64 and triton_importable():
            return _triton_impl()
        if cpu.supports(x):
            return cpu
        return eager
    if backend == "cpp":
        if not cpu.supports(x):
            raise RuntimeError(
                f"backend 'cpp' needs a CPU float32/float64 tensor and a built library; got {x.device}/{x.dtype}"
                + (f" ({cpu.error})" if cpu.error else "")
            )
        return cpu
    if backend == "triton":
        if not triton_importable():
            raise RuntimeError("backend 'triton' needs the triton package")
        if not (x.is_cuda or triton_interpret()):
            raise RuntimeError("backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        return _triton_impl()
    if backend == "eager":
        return eager
    raise ValueError(f"unknown neuron backend {backend!r}; expected one of {BACKENDS}")


class NeuronFunction(torch.autograd.Function):
    """Autograd node: ``impl.forward`` saves compact state, ``impl.backward`` recomputes the rest."""

    @staticmethod
    def forward(ctx, x, kind, params, save, impl):  # type: ignore[override]
        spikes, state = impl.forward(x, kind, params, save)
        ctx.save_for_backward(state)
        ctx.meta = (kind, params, save, impl)
        return spikes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (state,) = ctx.saved_tensors
        kind, params, save, impl = ctx.meta
        return impl.backward(grad.contiguous(), state, kind, params, save), None, None, None, None


def run_neuron(x: torch.Tensor, kind: str, params: NeuronParams, backend: str = "auto",
               saved: str = "auto") -> torch.Tensor:
    """Run neuron ``kind`` (``lif``, ``ternary_lif``, ``ternary_guo``) over ``x: [T, ...]`` on a fused path."""
    if x.dim() < 1 or x.shape[0] == 0 or x.numel() == 0:
        return x.clone()
    impl = select_impl(x, backend)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute).contiguous()
    if torch.is_grad_enabled() and xc.requires_grad:
        save = choose_save(kind, compute, params.detach_reset, saved)
        out = NeuronFunction.apply(xc, kind, params, save, impl)
    else:
        out, _ = impl.forward(xc, kind, params, "none")
    return out if out.dtype == x.dtype else out.to(x.dtype)


def lif_fused(
    x: torch.Tensor,
    tau: float = 2.0,
    v_th: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
) -> torch.Tensor:
    """Fused multi-step LIF over ``x: [T, ...]`` on the best path for the device (see :func:`run_neuron`)."""
    return run_neuron(x, "lif", NeuronParams(tau, v_th, v_reset, alpha, 0.25, detach_reset))
