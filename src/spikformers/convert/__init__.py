"""Networks and checkpoints trained elsewhere, loaded into spikformers models with every weight and statistic.

:func:`from_spikingjelly` takes a network of spikingjelly's model zoo (Spikformer, QKFormer, Spike-driven
Transformer) and returns the equivalent spikformers model; :func:`convert_spikingjelly` also returns the key map
it used, and :func:`check_parity` runs both networks on one input and measures how far apart their logits,
spikes, gradients and batch-norm statistics are.

:func:`import_checkpoint` (and ``spikformers.create_model(name, checkpoint_path=...)``) reads checkpoint files:
spikingjelly zoo state dicts, the official Spikformer, QKFormer and Spike-driven Transformer checkpoints, and
spikformers' own run and Hub folders, never running code from them. :func:`save_hub_folder` writes a model in the
Hugging Face Hub layout that ``timm.create_model("hf-hub:...")`` reads.
"""

from .hub import load_hub_folder, save_hub_folder
from .importer import Imported, import_checkpoint, load_checkpoint
from .keymap import ConversionError, KeyMap, fill_state_dict
from .spikingjelly import Conversion, Parity, check_parity, convert_spikingjelly, from_spikingjelly

__all__ = ["ConversionError", "Conversion", "Imported", "KeyMap", "Parity", "check_parity", "convert_spikingjelly",
           "fill_state_dict", "from_spikingjelly", "import_checkpoint", "load_checkpoint", "load_hub_folder",
           "save_hub_folder"]
