"""The kernel switchboard: every process-wide switch of the kernel floor in one typed configuration.

The switches choose between paths that compute the same numbers (bit for bit, or to float rounding where a
docstring says so); none changes a model's weights or outputs beyond that. Read the current setting with
:func:`get_kernel_config`, change it for a block of code with the :func:`kernel_config` context manager (which
puts the previous setting back on exit, also on an error), or for the rest of the process with
:func:`set_kernel_config`::

    with kernel_config(event_driven=False, fused_bn_neuron=False):
        logits = model(x)  # dense products, batch norm and neuron as separate modules

The setting is one for the whole process (every thread sees it), as torch's own backend flags are.

Watching a model from outside: under ``kernel_config(observable=True)`` every unit runs its plain path, the one a
``TorchFunctionMode`` and module hooks see whole (see :class:`KernelConfig`). It is the one way in which the
kernels let themselves be watched: an observer puts it in force while it watches, and no kernel looks for any
particular observer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["KernelConfig", "get_kernel_config", "kernel_config", "set_kernel_config"]


@dataclass(frozen=True)
class KernelConfig:
    """The kernel floor's switches (defaults: every fast path on).

    Attributes:
        compact_spikes: the products of :mod:`.spike_ops` keep a spike input for backward as bits (or bytes for
            small integers) instead of floats (``train.compact_spikes``).
        event_driven: on the CPU, linears, 3x3 convs and the attention product of sparse spikes add the weights
            of the non-zero inputs instead of multiplying dense (:mod:`.spike_ops`; ``train.event_driven``).
        fused_bn_neuron: on the CPU, a unit's batch norm and LIF run as one kernel (:mod:`.bn_lif`;
            ``train.fused_bn_neuron``).
        overwrite_scratch: at inference, the compiled CPU neuron writes its spikes over an input marked as
            scratch (:func:`~.dispatch.mark_scratch`: a unit's batch-norm output) instead of into a new tensor; off,
            a forward hook that keeps that output sees it, not the spikes written over it.
        calibrate: choose between event-driven and dense kernels (and between two dense input-gradient products) by
            a timed trial per shape class on this machine, cached (:mod:`.calibration`); off: the fixed density
            thresholds of :mod:`.spike_ops`.
        kernel_check: check each Triton kernel variant against the reference loop before its first use
            (:mod:`.selfcheck`); None leaves it to ``$SPIKFORMERS_KERNEL_CHECK`` (default on).
        observable: someone watches from outside (off by default). Every product is then one ``F.linear`` /
            ``F.conv2d`` / ``matmul`` call over all its operands (no event-driven kernel, no image convolved once
            for all T steps), every batch norm and neuron is called as its module (no fused batch norm + LIF),
            and no kernel writes over an input (as ``overwrite_scratch=False``). The numbers are those of the
            plain paths; only the speed differs.
    """

    compact_spikes: bool = True
    event_driven: bool = True
    fused_bn_neuron: bool = True
    overwrite_scratch: bool = True
    calibrate: bool = True
    kernel_check: bool | None = None
    observable: bool = False


_FIELDS = {f.name: f for f in dataclasses.fields(KernelConfig)}
_config = KernelConfig()


def _checked(changes: dict[str, object]) -> dict[str, object]:
    """``changes`` if every key is a switch and every value fits it, else a TypeError naming the first that does
    not."""
    for name, value in changes.items():
        if name not in _FIELDS:
            raise TypeError(f"unknown kernel switch {name!r}; expected one of {list(_FIELDS)}")
        optional = name == "kernel_check"
        if not (isinstance(value, bool) or (optional and value is None)):
            expected = "True, False or None" if optional else "True or False"
            raise TypeError(f"kernel switch {name!r} must be {expected}, got {value!r}")
    return changes


def get_kernel_config() -> KernelConfig:
    """The switches in force now."""
    return _config


def set_kernel_config(config: KernelConfig | None = None, **changes: bool | None) -> KernelConfig:
    """Put ``config`` (all switches) or the named ``changes`` (the rest as they are) in force; returns the
    configuration that was in force before, for handing back to this function later."""
    global _config
    base = _config if config is None else config
    if not isinstance(base, KernelConfig):
        raise TypeError(f"set_kernel_config takes a KernelConfig, got {type(base).__name__}")
    previous, _config = _config, dataclasses.replace(base, **_checked(changes))
    return previous


@contextmanager
def kernel_config(**changes: bool | None) -> Iterator[KernelConfig]:
    """Within this block the named switches are set as given (the rest as they are); the previous configuration
    is put back on exit. Yields the configuration in force inside."""
    previous = set_kernel_config(**changes)
    try:
        yield _config
    finally:
        set_kernel_config(previous)
