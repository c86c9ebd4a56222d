"""spikformers: spiking vision transformers as interchangeable neurons, attention mechanisms and backbones.

    >>> import spikformers
    >>> model = spikformers.create_model("spikformer_4_384_cifar")
    >>> spikformers.list_models("spikformer_*")
"""

from pathlib import Path

from torch import nn

from .factory import create_model
from .registry import count_parameters, list_models, model_config


def from_spikingjelly(module: nn.Module, img_size: int | None = None) -> nn.Module:
    """The spikformers model equal to a spikingjelly model-zoo network; see
    :func:`spikformers.convert.from_spikingjelly` (imported on first use, so ``import spikformers`` stays fast)."""
    from .convert import from_spikingjelly as convert

    return convert(module, img_size)


def save_hub_folder(model: nn.Module, folder: str, pretrained_cfg: dict | None = None) -> Path:
    """Write ``model`` as a Hugging Face Hub folder (``config.json`` + ``model.safetensors``) that
    ``timm.create_model("hf-hub:ORG/NAME")`` reads once published; see :func:`spikformers.convert.save_hub_folder`."""
    from .convert import save_hub_folder as save

    return save(model, folder, pretrained_cfg)


__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_config", "count_parameters", "from_spikingjelly", "save_hub_folder",
           "__version__"]
