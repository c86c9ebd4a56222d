"""The kernel floor: every compiled and Triton kernel, the reference loops (the oracle) and the products on spikes.

It imports nothing from the rest of the package; neurons, layers and attention call into it.

Modules, from the bottom: :mod:`.common` (neuron parameters, kinds, saved-state formats), :mod:`.surrogate` (the
surrogate gradients), :mod:`.reference` (the plain per-step loops: the oracle every fast path is tested against),
:mod:`.cpp` with ``csrc/`` (the C++ library: neurons, batch norm + LIF, spike packing, event-driven products,
built on first use), :mod:`.triton` (the Triton neuron kernels, imported only when first needed), :mod:`.eager`
(the neuron algorithm in torch ops, the fallback), :mod:`.node` (one autograd node per multi-step neuron call),
:mod:`.selfcheck` (each Triton variant checked against the reference before first use), :mod:`.dispatch` (which
implementation runs a neuron call, and the call), :mod:`.bn_lif` (a unit's batch norm fused with its LIF),
:mod:`.spike_ops` (linear, conv, pool and attention products on spikes: compact saving, event-driven on the CPU),
:mod:`.calibration` (whether event-driven or dense is faster for a layer shape on this machine, timed once, cached).
:mod:`.config` is the switchboard: one typed :class:`KernelConfig` of every switch among these paths, set for a
block of code with ``with kernel_config(event_driven=False, ...):``.

``lif_multistep`` / ``ternary_multistep`` pick the fastest neuron path for the device (all give the same spikes
and, to 1e-6, the same gradients as the loops in :mod:`.reference`):

Each backend's implementation is the module of its name (:mod:`.cpp`, :mod:`.triton`, :mod:`.eager`,
:mod:`.reference`):

| backend     | where                          | what                                                          |
|-------------|--------------------------------|---------------------------------------------------------------|
| "cpp"       | CPU, float32/float64           | C++ kernel built on first use with the system compiler        |
| "triton"    | CUDA (or TRITON_INTERPRET=1)   | Triton kernels, imported lazily                                |
| "eager"     | anywhere                       | the same algorithm in torch ops; fallback when nothing else   |
| "reference" | anywhere                       | the plain per-step autograd loop (the oracle)                  |
| "auto"      | -                              | triton on CUDA, else cpp, else eager                           |

Each Triton variant is run against the reference loop on its first call in a process (:mod:`.selfcheck`): one that
differs, or fails to compile or launch, gives a :class:`KernelCheckWarning` and is replaced by the eager path.
``SPIKFORMERS_KERNEL_CHECK=0`` or ``kernel_config(kernel_check=False)`` skips the check.

Every fused path is one autograd node that saves only what backward needs; see :mod:`.common`. By default
(``saved="auto"``) the C++ path keeps no new state: it holds on to its input and rebuilds the membrane in
backward (``"recompute"``), which is faster on a CPU than computing and storing the surrogate; the Triton and
eager paths keep the surrogate in 23-bit fixed point plus the spike bit (3 bytes per element and step,
``"q24"``), which moves fewer bytes on a GPU. Any path takes any choice.
"""

from __future__ import annotations

import torch

from . import cpp
from .common import NeuronParams, choose_save, triton_importable, triton_interpret
from .config import KernelConfig, get_kernel_config, kernel_config, set_kernel_config
from .dispatch import BACKENDS, mark_scratch, run_neuron, select_impl
from .reference import lif_reference, ternary_lif_reference, ternary_reference
from .selfcheck import KernelCheckWarning

__all__ = [
    "BACKENDS",
    "KernelCheckWarning",
    "KernelConfig",
    "NeuronParams",
    "available_backends",
    "choose_save",
    "get_kernel_config",
    "kernel_config",
    "lif_multistep",
    "mark_scratch",
    "lif_reference",
    "run_neuron",
    "select_impl",
    "set_kernel_config",
    "ternary_multistep",
    "ternary_reference",
    "ternary_lif_reference",
]


def lif_multistep(
    x: torch.Tensor,
    tau: float = 2.0,
    v_th: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
    backend: str = "auto",
    saved: str = "auto",
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the LIF neuron over ``x: [T, ...]``; ``backend`` is one of :data:`BACKENDS`.

    ``saved`` picks the backward state of the fused paths (``"auto"``, ``"exact"``, ``"q24"``, ``"q16"``).
    ``v_init: [...]`` starts from that membrane; ``return_v`` also returns the final one (fused paths: inference).
    """
    if backend == "reference":
        return lif_reference(x, tau, v_th, v_reset, alpha, detach_reset, v_init, return_v)
    if backend not in BACKENDS:
        raise ValueError(f"unknown LIF backend {backend!r}; expected one of {BACKENDS}")
    params = NeuronParams(tau, v_th, v_reset, alpha, 0.25, detach_reset)
    return run_neuron(x, "lif", params, backend, saved, v_init, return_v)


def ternary_multistep(
    x: torch.Tensor,
    form: str = "guo",
    decay: float = 0.25,
    v_th: float = 1.0,
    tau: float = 2.0,
    alpha: float = 4.0,
    backend: str = "auto",
    saved: str = "auto",
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the ternary neuron over ``x: [T, ...]`` in ``form`` ``"guo"`` or ``"lif"`` (see ``TernaryNeuron``).

    ``v_init`` / ``return_v`` as for :func:`lif_multistep`.
    """
    if form not in ("guo", "lif"):
        raise ValueError(f"ternary form must be 'guo' or 'lif', got {form!r}")
    if backend == "reference":
        if form == "guo":
            return ternary_reference(x, decay, v_th, v_init, return_v)
        return ternary_lif_reference(x, tau, v_th, alpha, v_init, return_v)
    if backend not in BACKENDS:
        raise ValueError(f"unknown ternary backend {backend!r}; expected one of {BACKENDS}")
    kind = "ternary_guo" if form == "guo" else "ternary_lif"
    params = NeuronParams(tau=tau, v_th=v_th, v_reset=0.0, alpha=alpha, decay=decay, detach_reset=True)
    return run_neuron(x, kind, params, backend, saved, v_init, return_v)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on ``device`` here (``"reference"`` and ``"eager"`` always can)."""
    dev = torch.device(device)
    found = ["reference", "eager"]
    if dev.type == "cpu" and cpp.available():
        found.append("cpp")
    if triton_importable() and (dev.type == "cuda" or triton_interpret()):
        found.append("triton")
    return found
