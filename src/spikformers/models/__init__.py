"""Backbones, one file each: :mod:`.spikformer` (flat)."""

from .spikformer import SPS, Block, Spikformer

__all__ = ["SPS", "Block", "Spikformer"]
