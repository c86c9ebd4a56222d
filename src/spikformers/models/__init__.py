"""Backbones, one file each: :mod:`.spikformer` (flat), :mod:`.hst` (hierarchical, SpiLiFormer)."""

from .hst import HST, SpiLiFormer
from .spikformer import SPS, Block, Spikformer

__all__ = ["SPS", "Block", "Spikformer"]
__all__ += ["HST", "SpiLiFormer"]
