"""Every published Spikformer configuration's parameter count, forward shapes, registry and timm names."""

from __future__ import annotations

import pytest
import torch

import spikformers
from spikformers import count_parameters, create_model, list_models

# docs/models.md "Parameter counts", used column (LayerNorms and pos_embed that never run are not built)
SPIKFORMER_COUNTS = {
    "spikformer_8_384": 16_816_024,
    "spikformer_6_512": 23_373_352,
    "spikformer_8_512": 29_689_384,
    "spikformer_10_512": 36_005_416,
    "spikformer_8_768": 66_338_632,
    "spikformer_4_384_cifar": 9_324_730,
    "spikformer_4_256_cifar": 4_155_178,
    "spikformer_2_384_cifar": 5_765_050,
    "spikformer_2_256_dvs": 2_566_666,
}
PUBLISHED_M = {"spikformer_8_384": 16.81, "spikformer_8_512": 29.68, "spikformer_8_768": 66.34,
               "spikformer_4_384_cifar": 9.32, "spikformer_4_256_cifar": 4.15}


@pytest.mark.parametrize("name", sorted(SPIKFORMER_COUNTS))
def test_parameter_counts(name: str) -> None:
    n = count_parameters(create_model(name))
    assert n == SPIKFORMER_COUNTS[name]
    if name in PUBLISHED_M:
        assert abs(n / 1e6 - PUBLISHED_M[name]) <= 0.01


def test_cifar100_head_and_listing() -> None:
    assert count_parameters(create_model("spikformer_4_384_cifar", num_classes=100)) == 9_359_380
    assert set(SPIKFORMER_COUNTS) <= set(list_models("spikformer_*"))


def test_static_and_event_input_shapes() -> None:
    model = create_model("spikformer_2_64_cifar", img_size=16, in_chans=1, T=3).eval()
    x = torch.rand(2, 1, 16, 16)
    assert model(x).shape == (2, 10)
    assert torch.equal(model(x), model(x.unsqueeze(0).expand(3, -1, -1, -1, -1)))
    dvs = create_model("spikformer_2_64_dvs", T=4).eval()
    assert dvs.T == 4 and dvs(torch.rand(4, 2, 2, 128, 128)).shape == (2, 10)


def test_imagenet_forward_and_token_grid() -> None:
    model = create_model("spikformer_2_64", num_classes=7, T=1).eval()
    tokens = model.forward_features(torch.rand(1, 3, 224, 224))
    assert tokens.shape == (1, 1, 14 * 14, 64)
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_wrong_image_size_is_named() -> None:
    model = create_model("spikformer_2_64_cifar")
    with pytest.raises(ValueError, match=r"expects images of 3 x 32 x 32.*got \(3, 28, 28\)"):
        model(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="must be"):
        model(torch.rand(3, 32, 32))


def test_unknown_names_and_overrides() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vit_base_patch16")
    with pytest.raises(ValueError, match="variants"):
        create_model("spikformer_4_384_mnist")
    with pytest.raises(ValueError, match="unknown attention"):
        create_model("spikformer_2_64_cifar", attn="softmax")
    with pytest.raises(TypeError, match="unexpected keyword"):
        create_model("spikformer_2_64_cifar", dropout=0.1)


def test_timm_registration() -> None:
    import timm

    assert "spikformer_4_384_cifar" in timm.list_models("spikformer_*")
    model = timm.create_model("spikformer_4_256_cifar", num_classes=100)
    assert isinstance(model, spikformers.models.Spikformer) and model.head.out_features == 100


def test_attention_order_is_exact_for_spikes() -> None:
    from spikformers.attention.base import attention_product

    q, k, v = ((torch.rand(2, 3, 4, 20, 8) > 0.6).float() for _ in range(3))
    a = attention_product(q, k, v, "kv_first")
    b = attention_product(q, k, v, "qk_first")
    assert torch.equal(a, b) and torch.equal(a, q @ k.transpose(-1, -2) @ v)


def test_static_image_is_convolved_once(monkeypatch):
    """A static image expanded over T is convolved once (B images, not T*B); output and gradients are unchanged."""
    from spikformers import layers

    torch.manual_seed(0)
    unit = layers.ConvBN(3, 8, 3)
    image = torch.randn(2, 3, 8, 8)
    shapes = []
    real = layers.spike_conv2d
    monkeypatch.setattr(layers, "spike_conv2d", lambda x, *a: shapes.append(tuple(x.shape)) or real(x, *a))
    y_static = unit.project(image.unsqueeze(0).expand(4, *image.shape))
    y_repeated = unit.project(image.unsqueeze(0).repeat(4, 1, 1, 1, 1))
    assert shapes == [(2, 3, 8, 8), (8, 3, 8, 8)]
    torch.testing.assert_close(y_static, y_repeated, atol=1e-6, rtol=0)
    g = torch.randn_like(y_static)
    grads = [torch.autograd.grad(y, unit.conv.weight, g)[0] for y in (y_static, y_repeated)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, params", [
    ("sdt_8_384", 16_816_024), ("sdt_6_512", 23_373_352), ("sdt_8_512", 29_689_384), ("sdt_10_512", 36_005_416),
    ("sdt_8_768", 66_338_632), ("sdt_2_512_cifar", 10_233_418),
])
def test_sdt_presets_are_the_spike_driven_transformer(name: str, params: int) -> None:
    """``sdt_*`` build SDT-v1 as its official code does (its own patch splitting with a real-valued embedding, a
    LIF before the head, no Q/K/V biases), at the exact counts of docs/models.md (the official file's, less its
    unused talking_heads)."""
    model = create_model(name)
    cfg = model.default_cfg["config"]
    assert (cfg["sps_form"], cfg["head_neuron"], cfg["qkv_bias"]) == ("sdt", True, False)
    assert count_parameters(model) == params
