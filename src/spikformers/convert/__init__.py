"""Networks trained elsewhere, loaded into spikformers models with every weight and statistic.

:func:`from_spikingjelly` takes a network of spikingjelly's model zoo (Spikformer, QKFormer, Spike-driven
Transformer) and returns the equivalent spikformers model; :func:`convert_spikingjelly` also returns the key map
it used, and :func:`check_parity` runs both networks on one input and measures how far apart their logits,
spikes, gradients and batch-norm statistics are.
"""

from .spikingjelly import (
    Conversion,
    ConversionError,
    KeyMap,
    Parity,
    check_parity,
    convert_spikingjelly,
    from_spikingjelly,
)

__all__ = ["ConversionError", "Conversion", "KeyMap", "Parity", "check_parity", "convert_spikingjelly",
           "from_spikingjelly"]
