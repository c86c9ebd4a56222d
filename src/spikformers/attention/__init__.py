"""Attention mechanisms, one file each, all ``Attention(dim, heads, **opts)(x: [T, B, N, C]) -> [T, B, N, C]``.

Backbones take ``attn="ssa" | ...`` (a name in :data:`ATTENTIONS`) or a class, and never branch on which.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .a2os2a import A2OS2A
from .lidiff import FBLiDiff, FFLiDiff
from .psa import PSA
from .sdsa import SDSA
from .ssa import SSA

ATTENTIONS: dict[str, type[nn.Module]] = {"ssa": SSA}
ATTENTIONS.update({"psa": PSA, "a2os2a": A2OS2A, "sdsa": SDSA})
ATTENTIONS.update({"ff_lidiff": FFLiDiff, "fb_lidiff": FBLiDiff})


def attention_class(attn: str | type[nn.Module]) -> type[nn.Module]:
    """The class of an attention mechanism given by name (see :data:`ATTENTIONS`) or as a class."""
    if isinstance(attn, str):
        if attn not in ATTENTIONS:
            raise ValueError(f"unknown attention {attn!r}; expected one of {sorted(ATTENTIONS)}")
        return ATTENTIONS[attn]
    return attn


def takes_option(attn: str | type[nn.Module], name: str) -> bool:
    """Whether the mechanism's constructor has an option called ``name``."""
    return name in inspect.signature(attention_class(attn).__init__).parameters


def create_attention(
    attn: str | type[nn.Module], dim: int, heads: int, defaults: dict[str, Any] | None = None, **opts: Any
) -> nn.Module:
    """Build an attention module from its name (see :data:`ATTENTIONS`) or class.

    ``opts`` are passed as given (an option the mechanism lacks is an error). ``defaults`` are a backbone
    variant's soft defaults (e.g. the DVS code's ``scale=0.25``), passed only to mechanisms that take them.
    """
    cls = attention_class(attn)
    soft = {k: v for k, v in (defaults or {}).items() if takes_option(cls, k) and k not in opts}
    return cls(dim, heads, **soft, **opts)


__all__ = ["ATTENTIONS", "SSA", "attention_class", "create_attention", "takes_option"]
__all__ += ["PSA", "A2OS2A", "SDSA"]
__all__ += ["FFLiDiff", "FBLiDiff"]
