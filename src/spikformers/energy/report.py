"""Energy from operation counts, with the papers' formula, and the tables and JSON that show it.

    E = E_MAC * (MAC operations) + E_AC * (AC operations),  E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm, Horowitz 2014)

MACs are the real x real products (the first conv on the encoded image, counted once for a static image; the
head on the time-averaged features); ACs are the synaptic operations (SOPs) of every product that has a spike
operand. All numbers are per image. Energies are kept in mJ (``energy_mj``, the JSON) and shown in the unit
:func:`energy_unit` picks from their magnitude (mJ, µJ, nJ or pJ), in tables and figures alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .counter import LayerCount, all_ones_firing, count_ops

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
PJ_PER_MJ = 1e9

__all__ = [
    "E_MAC_PJ", "E_AC_PJ", "LayerEnergy", "EnergyReport", "measure", "upper_bound_mj", "layer_group",
    "energy_unit", "format_energy",
]  # fmt: skip

# display units of an energy and their size in mJ, largest first
ENERGY_UNITS = (("mJ", 1.0), ("µJ", 1e-3), ("nJ", 1e-6), ("pJ", 1e-9))


def energy_unit(mj: float) -> tuple[str, float]:
    """The unit to show energies of about ``mj`` millijoules in, and its size in mJ.

    The largest of mJ, µJ, nJ, pJ in which ``|mj|`` is at least 1 (mJ for 0), so that three decimals always
    show four significant digits: 0.001523 mJ is shown as 1.523 µJ, not 0.00152 mJ.
    """
    for unit, size in ENERGY_UNITS:
        if abs(mj) >= size:
            return unit, size
    return ENERGY_UNITS[-1] if mj else ENERGY_UNITS[0]


def format_energy(mj: float, unit: str | None = None, decimals: int = 3) -> str:
    """``mj`` millijoules as text with its unit, e.g. ``"1.523 µJ"``; in ``unit`` if given, else in
    :func:`energy_unit`'s."""
    sizes = dict(ENERGY_UNITS)
    if unit is None:
        unit = energy_unit(mj)[0]
    elif unit not in sizes:
        raise ValueError(f"energy unit must be one of {list(sizes)}, got {unit!r}")
    return f"{mj / sizes[unit]:.{decimals}f} {unit}"


@dataclass
class LayerEnergy:
    """One row of the energy table: a named layer or product, per image."""

    name: str
    op: str
    operands: str
    steps: int
    flops: float
    firing_rate: float
    sops: float
    macs: float
    acs: float
    energy_mj: float


@dataclass
class EnergyReport:
    """Per-layer and total operations and energy of a model, per image."""

    model: str
    T: int
    images: int
    e_mac_pj: float
    e_ac_pj: float
    layers: list[LayerEnergy] = field(default_factory=list)
    input: str = ""

    @property
    def total_flops(self) -> float:
        """Sum of single-step FLOPs (multiply-accumulates) of every counted layer."""
        return sum(r.flops for r in self.layers)

    @property
    def total_sops(self) -> float:
        return sum(r.sops for r in self.layers)

    @property
    def total_macs(self) -> float:
        return sum(r.macs for r in self.layers)

    @property
    def total_acs(self) -> float:
        return sum(r.acs for r in self.layers)

    @property
    def energy_mj(self) -> float:
        """``(E_MAC * MACs + E_AC * ACs)`` in mJ per image."""
        return (self.e_mac_pj * self.total_macs + self.e_ac_pj * self.total_acs) / PJ_PER_MJ

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: totals (``total_flops``, ``total_sops``, ``total_macs``, ``total_acs``, ``energy_mj``)
        and ``layers``."""
        return {
            "model": self.model, "T": self.T, "images": self.images, "input": self.input,
            "e_mac_pj": self.e_mac_pj, "e_ac_pj": self.e_ac_pj,
            "total_flops": self.total_flops, "total_sops": self.total_sops, "total_macs": self.total_macs,
            "total_acs": self.total_acs, "energy_mj": self.energy_mj,
            "groups": self.groups(),
            "layers": [asdict(r) for r in self.layers],
        }  # fmt: skip

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def groups(self) -> dict[str, float]:
        """Energy in mJ per image by part of the network (see :func:`layer_group`)."""
        out: dict[str, float] = {}
        for r in self.layers:
            g = layer_group(r.name)
            out[g] = out.get(g, 0.0) + r.energy_mj
        return out

    def table(self) -> str:
        """The per-layer table and the totals, as printed by ``spikformers energy``; energies in the unit
        :func:`energy_unit` picks for the total."""
        unit, size = energy_unit(self.energy_mj)
        w = max([len(r.name) for r in self.layers] + [5])
        head = (f"{'layer':{w}s} {'operands':22s} {'T':>3s} {'FLOPs':>10s} {'rate':>6s} {'SOPs':>10s} "
                f"{'MACs':>10s} {'energy ' + unit:>10s}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name:{w}s} {r.operands[:22]:22s} {r.steps:3d} {_si(r.flops):>10s} "
                         f"{r.firing_rate:6.3f} {_si(r.sops):>10s} {_si(r.macs):>10s} {r.energy_mj / size:10.3f}")
        lines.append("-" * len(head))
        lines.append(f"{'total':{w}s} {'':22s} {self.T:3d} {_si(self.total_flops):>10s} {'':6s} "
                     f"{_si(self.total_sops):>10s} {_si(self.total_macs):>10s} {self.energy_mj / size:10.3f}")
        groups = ", ".join(f"{g} {e / size:.3f}" for g, e in sorted(self.groups().items(), key=lambda kv: -kv[1]))
        lines.append(f"energy by part ({unit}): {groups}")
        lines.append(f"E_MAC {self.e_mac_pj} pJ x {_si(self.total_macs)} MACs + E_AC {self.e_ac_pj} pJ x "
                     f"{_si(self.total_acs)} ACs; per image, mean over {self.images} images ({self.input})")
        return "\n".join(lines)

    def summary_line(self) -> str:
        """The last line ``spikformers energy`` prints: energy and SOPs per image."""
        return (f"energy: {format_energy(self.energy_mj)} per image, {self.total_sops / 1e6:.2f} M SOPs, "
                f"{self.total_macs / 1e6:.2f} M MACs ({self.model}, T={self.T}, {self.images} images)")


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3f}{unit}"
    return f"{v:.1f}"


def layer_group(name: str) -> str:
    """Part of the network a layer belongs to, from its module path: embed, attention, mlp, feedback, head."""
    parts = name.split(".")
    if "attn" in parts:
        return "attention"
    if "mlp" in parts:
        return "mlp"
    if parts[0] == "head":
        return "head"
    if parts[0] == "feedback":
        return "feedback"
    if parts[0].startswith(("embed", "patch_embed")):
        return "embed"
    return "other"


def rows_from_counts(layers: dict[str, LayerCount], e_mac: float, e_ac: float) -> list[LayerEnergy]:
    """Turn counter entries into table rows, in the order the layers first ran."""
    return [
        LayerEnergy(c.name, c.op, c.operand_types, c.steps, c.flops, c.firing_rate, c.sops, c.macs, c.acs,
                    c.energy_pj(e_mac, e_ac) / PJ_PER_MJ)
        for c in layers.values()
    ]


def measure(
    model: nn.Module,
    batches: Iterable[torch.Tensor] | torch.Tensor,
    e_mac: float = E_MAC_PJ,
    e_ac: float = E_AC_PJ,
    name: str | None = None,
    input_desc: str = "",
    all_ones: bool = False,
    T: int | None = None,
    batch: int | None = None,
) -> EnergyReport:
    """Count ``model`` on the input batches and price the operations; ``all_ones`` makes every neuron fire.

    ``T`` and ``batch`` as for :func:`~spikformers.energy.counter.count_ops`.
    """
    handles = all_ones_firing(model) if all_ones else []
    try:
        layers, images = count_ops(model, batches, T, batch)
    finally:
        for h in handles:
            h.remove()
    arch = name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    steps = T or int(getattr(model, "T", 1))
    return EnergyReport(arch, steps, images, e_mac, e_ac, rows_from_counts(layers, e_mac, e_ac),
                        input=input_desc)


def upper_bound_mj(report: EnergyReport, first: str | None = None) -> float:
    """The formula's bound at firing rate 1: ``E_MAC * FLOPs(first layer) + E_AC * sum(steps * FLOPs(rest))``.

    Every layer but the first runs ``steps`` = T times per image (the head, which sees the time mean, once).
    """
    rows = report.layers
    first_row = next(r for r in rows if r.name == first) if first else rows[0]
    rest = sum(r.steps * r.flops for r in rows if r is not first_row)
    return (report.e_mac_pj * first_row.flops + report.e_ac_pj * rest) / PJ_PER_MJ
