"""Energy accounting: count FLOPs, firing rates, SOPs, MACs and ACs per layer on real input; price them in mJ.

``measure(model, batches)`` returns an :class:`EnergyReport`; ``spikformers energy`` prints it.
"""

from .counter import LayerCount, OpCounter, all_ones_firing, count_ops, operand_kind
from .report import E_AC_PJ, E_MAC_PJ, EnergyReport, LayerEnergy, measure, upper_bound_mj

__all__ = [
    "LayerCount", "OpCounter", "all_ones_firing", "count_ops", "operand_kind",
    "E_AC_PJ", "E_MAC_PJ", "EnergyReport", "LayerEnergy", "measure", "upper_bound_mj",
]  # fmt: skip
