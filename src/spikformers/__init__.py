"""spikformers: spiking vision transformers as interchangeable neurons, attention mechanisms and backbones.

    >>> import spikformers
    >>> model = spikformers.create_model("spikformer_4_384_cifar")
    >>> spikformers.list_models("spikformer_*")
"""

from .registry import count_parameters, create_model, list_models, model_config

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_config", "count_parameters", "__version__"]
