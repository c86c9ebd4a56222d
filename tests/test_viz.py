"""Pictures: every figure is written as a readable PNG, by the functions and by ``spikformers plot``."""

from __future__ import annotations

import json

import pytest
import torch

from spikformers import create_model
from spikformers.cli import main
from spikformers.energy import measure
from spikformers.viz import (
    attention_maps,
    default_raster_layers,
    plot_attention,
    plot_curves,
    plot_energy,
    plot_firing,
    plot_raster,
    record_spikes,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 5000


METRICS = (
    "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n"
    "1,0.001,2.1,20.0,1.9,25.0,100,1.0\n2,0.002,1.5,45.0,1.4,50.0,110,2.0\n3,0.001,1.1,60.0,1.2,58.0,105,3.0\n"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder of a tiny digits model (untrained weights, BN statistics from digits)."""
    from spikformers.data import Digits
    from spikformers.energy.cli import calibrate_bn
    from spikformers.train.checkpoint import save_model_config, save_weights
    from spikformers.train.config import TrainConfig, dump_config

    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("spikformer_1_32_cifar", img_size=16, in_chans=1, num_classes=10, T=2, attn="a2os2a")
    calibrate_bn(model, [Digits("train", img_size=16, augment=False).tensors[0][:64]])
    cfg = TrainConfig()
    cfg.model.name, cfg.out = "spikformer_1_32_cifar", str(out)
    dump_config(cfg, out / "config.yaml")
    save_model_config(model, out)
    save_weights(model, out / "last.safetensors")
    (out / "metrics.csv").write_text(METRICS)
    (out / "summary.json").write_text(json.dumps({"architecture": "spikformer_1_32_cifar", "test_acc": 58.0}))
    return out, model.eval()


def test_curves(tmp_path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    assert _is_png(plot_curves(tmp_path / "metrics.csv", tmp_path / "c.png"))


def test_firing_energy_raster_attention(tiny_run, digits_batch, tmp_path) -> None:
    _, model = tiny_run
    x = digits_batch[0][:3]
    report = measure(model, x)
    assert _is_png(plot_firing(report, tmp_path / "f.png"))
    assert _is_png(plot_energy(report, tmp_path / "e.png"))
    layers = default_raster_layers(model)
    assert len(layers) == 4
    spikes = record_spikes(model, x, layers + ["blocks.0.attn.v.neuron"])
    assert spikes["blocks.0.attn.v.neuron"].shape[0] == 2  # [T, N, C] of the first image
    assert _is_png(plot_raster(spikes, tmp_path / "r.png"))
    for mode in ("output", "qk"):
        maps = attention_maps(model, x, mode)
        assert list(maps) == ["blocks.0.attn"] and maps["blocks.0.attn"].shape == (3, 4, 4)
        assert _is_png(plot_attention(x, maps, tmp_path / f"a_{mode}.png"))
    with pytest.raises(ValueError, match="no neuron module"):
        record_spikes(model, x, ["nope"])


def test_attention_maps_on_hierarchical_model(digits_batch) -> None:
    torch.manual_seed(0)
    model = create_model("spiliformer_2_64_cifar", img_size=16, in_chans=1, num_classes=10).eval()
    maps = attention_maps(model, digits_batch[0][:2])
    assert maps["stage1.0.attn"].shape == (2, 16, 16) and maps["stage3.0.attn"].shape == (2, 4, 4)


def test_plot_command(tiny_run, tmp_path, capsys) -> None:
    run, _ = tiny_run
    assert main(["plot", str(run), "--out", str(tmp_path / "a")]) == 0
    assert _is_png(tmp_path / "a" / "curves.png")
    assert main(["plot", str(run), "--firing", "--energy", "--raster", "--attention", "--images", "2",
                 "--batch-size", "8", "--out", str(tmp_path / "b")]) == 0
    for name in ("firing", "energy", "raster", "attention_output"):
        assert _is_png(tmp_path / "b" / f"{name}.png")
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("wrote 4 figures")
