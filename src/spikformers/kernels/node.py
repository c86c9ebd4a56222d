"""One autograd node for a whole multi-step neuron call, over any implementation (C++, Triton, eager torch).

Forward runs all T steps in one kernel and saves only the compact state of :mod:`.common` through
``ctx.save_for_backward``; backward walks the steps in reverse from that state. An implementation is a module
with ``forward(x, kind, params, save, ...)`` and ``backward(grad, state, kind, params, save)`` (:mod:`.cpp`,
:mod:`.triton`, :mod:`.eager`); one whose backward rebuilds the membrane from the input itself sets
``RECOMPUTES = True``.
"""

from __future__ import annotations

import torch


class NeuronFunction(torch.autograd.Function):
    """Autograd node: ``impl.forward`` saves compact state, ``impl.backward`` recomputes the rest."""

    @staticmethod
    def forward(ctx, x, kind, params, save, impl):  # type: ignore[override]
        if save == "recompute":  # keep the input itself; backward rebuilds the membrane from it
            spikes, state = impl.forward(x, kind, params, "none")[0], x
        else:
            spikes, state = impl.forward(x, kind, params, save)
        ctx.save_for_backward(state)
        ctx.meta = (kind, params, save, impl)
        return spikes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (state,) = ctx.saved_tensors
        kind, params, save, impl = ctx.meta
        if save == "recompute" and not getattr(impl, "RECOMPUTES", False):  # generic: rerun forward keeping h
            state, save = impl.forward(state, kind, params, "exact")[1], "exact"
        return impl.backward(grad.contiguous(), state, kind, params, save), None, None, None, None
