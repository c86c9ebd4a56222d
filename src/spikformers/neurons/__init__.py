"""Spiking neurons. Each maps a whole sequence ``x: [T, ...]`` to outputs ``[T, ...]`` in one call.

The membrane state lives only inside that call, so nothing leaks from one forward pass to the next and no
``reset_net`` exists (the one exception is the explicit :func:`~spikformers.neurons.state.carry_membrane`
context used to run T in chunks; its state is dropped on exit).
``create_neuron(kind, **kwargs)`` builds any of them from a string.

| kind      | output values  | used for                                   |
|-----------|----------------|--------------------------------------------|
| "lif"     | {0, 1}         | every paper's default neuron               |
| "ternary" | {-1, 0, +1}    | A2OS2A's V                                 |
| "relu"    | [0, inf)       | A2OS2A's K (real-valued, no threshold)     |
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kernels import BACKENDS, lif_multistep, ternary_multistep
from ..kernels.common import SAVED_CHOICES, NeuronParams
from .state import current_store


def _check_saved(saved: str) -> str:
    if saved not in SAVED_CHOICES:
        raise ValueError(f"neuron saved must be one of {SAVED_CHOICES}, got {saved!r}")
    return saved

__all__ = ["Neuron", "LIF", "TernaryNeuron", "ReLUNeuron", "create_neuron", "NEURONS"]


class Neuron(nn.Module):
    """Base class: ``forward(x: [T, ...]) -> [T, ...]``; ``values`` names the output set for energy counting."""

    values: str = "binary"  # "binary" | "ternary" | "real"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class LIF(Neuron):
    """Multi-step leaky integrate-and-fire neuron (docs/models.md): hard reset, sigmoid surrogate, ``>=`` fires.

    Args:
        tau: membrane time constant (decay_input form: ``h = v + (x - (v - v_reset)) / tau``).
        v_th: firing threshold.
        v_reset: reset potential and initial membrane.
        alpha: steepness of the sigmoid surrogate gradient.
        detach_reset: do not back-propagate through the reset's dependence on the spike.
        backend: ``"auto"`` (fastest for the device: Triton on CUDA, the C++ kernel on CPU, else eager torch),
            ``"cpp"``, ``"triton"``, ``"eager"`` or ``"reference"`` (plain per-step loop).
        saved: what the fused backends keep for backward: ``"recompute"`` (nothing new: the input is kept and
            the membrane rebuilt), ``"q24"`` (23-bit surrogate + spike bit, 3 bytes per element and step),
            ``"exact"`` (the membrane), ``"q16"`` (2 bytes, gradients off by ~3e-5) or ``"auto"`` (recompute
            on the C++ path, q24 on Triton and eager).

    Shape: ``x: [T, ...]`` -> spikes ``[T, ...]`` of the same dtype, values in {0, 1}.
    """

    values = "binary"

    def __init__(
        self,
        tau: float = 2.0,
        v_th: float = 1.0,
        v_reset: float = 0.0,
        alpha: float = 4.0,
        detach_reset: bool = True,
        backend: str = "auto",
        saved: str = "auto",
    ) -> None:
        super().__init__()
        if tau <= 1.0 and tau != 1.0:
            raise ValueError(f"LIF tau must be >= 1, got {tau}")
        if not v_th > v_reset:  # else it fires at every step (NaN fails too)
            raise ValueError(f"LIF v_th must be > v_reset ({v_reset}), got {v_th}")
        if not alpha > 0:
            raise ValueError(f"LIF alpha (surrogate steepness) must be > 0, got {alpha}")
        self.tau, self.v_th, self.v_reset, self.alpha = float(tau), float(v_th), float(v_reset), float(alpha)
        self.detach_reset = detach_reset
        self.backend = backend
        self.saved = _check_saved(saved)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        store = current_store()
        if store is None:
            return lif_multistep(
                x, self.tau, self.v_th, self.v_reset, self.alpha, self.detach_reset, backend=self.backend,
                saved=self.saved,
            )
        key = store.key(self)
        out, v = lif_multistep(x, self.tau, self.v_th, self.v_reset, self.alpha, self.detach_reset,
                               backend=self.backend, v_init=store.get(key), return_v=True)
        store.put(key, v)
        return out

    def unit_params(self) -> NeuronParams | None:
        """This LIF's parameters when a unit may fuse it with the batch norm before it
        (:mod:`spikformers.kernels.bn_lif`): a plain LIF on a fused backend, an exact saved state, no membrane carried
        between calls; else None."""
        if (type(self) is not LIF or "forward" in vars(self) or self.backend not in ("auto", "cpp")
                or self.saved not in ("auto", "recompute", "exact") or current_store() is not None):
            return None
        return NeuronParams(self.tau, self.v_th, self.v_reset, self.alpha, 0.25, self.detach_reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_th={self.v_th}, v_reset={self.v_reset}, alpha={self.alpha}"


class TernaryNeuron(Neuron):
    """Ternary spiking neuron emitting {-1, 0, +1} (docs/models.md, "Neurons").

    ``form="guo"`` (default, Ternary Spike, Guo et al. 2024): ``u = decay * u + x``; fire ``sign(u)`` where
    ``|u| >= v_th / 2``; hard reset; straight-through gradient inside [-1, 1].
    ``form="lif"``: LIF charge with ``+-v_th`` thresholds and the sigmoid surrogate. Which form A2OS2A uses is
    not confirmed from its text; hence the option. ``backend`` and ``saved`` as for :class:`LIF` (``saved``
    matters only for ``form="lif"``; the "guo" form always keeps one byte per element and step).
    """

    values = "ternary"

    def __init__(
        self,
        form: str = "guo",
        decay: float = 0.25,
        v_th: float = 1.0,
        tau: float = 2.0,
        alpha: float = 4.0,
        backend: str = "auto",
        saved: str = "auto",
    ) -> None:
        super().__init__()
        if form not in ("guo", "lif"):
            raise ValueError(f"TernaryNeuron form must be 'guo' or 'lif', got {form!r}")
        if backend not in BACKENDS:
            raise ValueError(f"TernaryNeuron backend must be one of {BACKENDS}, got {backend!r}")
        if not v_th > 0:
            raise ValueError(f"TernaryNeuron v_th must be > 0, got {v_th}")
        if form == "lif" and tau < 1.0:
            raise ValueError(f"TernaryNeuron tau must be >= 1, got {tau}")
        self.form, self.decay, self.v_th, self.tau, self.alpha = form, decay, v_th, tau, alpha
        self.backend = backend
        self.saved = _check_saved(saved)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        store = current_store()
        if store is None:
            return ternary_multistep(x, self.form, self.decay, self.v_th, self.tau, self.alpha, backend=self.backend,
                                     saved=self.saved)
        key = store.key(self)
        out, v = ternary_multistep(x, self.form, self.decay, self.v_th, self.tau, self.alpha, backend=self.backend,
                                   v_init=store.get(key), return_v=True)
        store.put(key, v)
        return out

    def extra_repr(self) -> str:
        return f"form={self.form!r}, v_th={self.v_th}"


class ReLUNeuron(Neuron):
    """Real-valued non-negative 'neuron' (A2OS2A's K): ``ReLU(x)`` at every step, no threshold, no state."""

    values = "real"

    def __init__(self, **_: Any) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


NEURONS: dict[str, type[Neuron]] = {"lif": LIF, "ternary": TernaryNeuron, "relu": ReLUNeuron}


def configure_neurons(model: nn.Module, backend: str | None = None, saved: str | None = None) -> int:
    """Set ``backend`` and/or ``saved`` on every LIF and ternary neuron of ``model``; returns how many were set."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"neuron backend must be one of {BACKENDS}, got {backend!r}")
    if saved is not None:
        _check_saved(saved)
    found = 0
    for m in model.modules():
        if isinstance(m, (LIF, TernaryNeuron)):
            found += 1
            if backend is not None:
                m.backend = backend
            if saved is not None:
                m.saved = saved
    return found


def create_neuron(kind: str | type[Neuron] = "lif", **kwargs: Any) -> Neuron:
    """Build a neuron from its kind string (``"lif"``, ``"ternary"``, ``"relu"``) or class."""
    if isinstance(kind, type):
        return kind(**kwargs)
    try:
        return NEURONS[kind](**kwargs)
    except KeyError:
        raise ValueError(f"unknown neuron kind {kind!r}; expected one of {sorted(NEURONS)}") from None
