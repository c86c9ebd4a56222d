"""Figures: what they show, not only that they are written. Attention maps as token cells on one perceptually
uniform colour scale with one labelled colorbar; energies in the unit their size calls for; rasters that say what a
mark means; one colour per network part across panels; legends outside the data; the formats and resolution asked
for; and ``plot`` and ``energy`` reporting the same numbers for the same run."""

from __future__ import annotations

import argparse
import json
import struct

import pytest
import torch

from spikformers import create_model
from spikformers.cli import build_parser, main
from spikformers.energy import measure
from spikformers.energy.report import layer_group
from spikformers.viz import (
    GROUP_COLORS,
    attention_figure,
    attention_maps,
    curves_figure,
    default_raster_layers,
    energy_figure,
    firing_figure,
    raster_figure,
    record_spikes,
)

UNIFORM_CMAPS = {"viridis", "magma", "cividis", "inferno", "plasma"}

METRICS = (  # the best test accuracy is not the last epoch's
    "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n"
    "1,0.001,2.1,20.0,1.9,25.0,100,1.0\n2,0.002,1.5,45.0,1.4,50.0,110,2.0\n3,0.001,1.1,60.0,1.2,58.0,105,3.0\n"
    "4,0.0005,1.0,62.0,1.3,56.5,104,4.0\n"
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


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _legends(fig) -> list:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _assert_legends_cover_no_axes(fig) -> None:
    fig.canvas.draw()
    legends = _legends(fig)
    assert legends
    for leg in legends:
        box = leg.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), f"legend {leg.get_title().get_text()!r} covers {ax}"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------------------------------
def test_attention_figure_token_cells_one_scale_one_colorbar(tiny_run, digits_batch) -> None:
    _, model = tiny_run
    x = digits_batch[0][:3]
    maps = attention_maps(model, x, "output")
    maps["copy"] = maps["blocks.0.attn"] * 0.5  # a second module with other values: the scale must still be one
    fig = attention_figure(x, maps, "output")
    cbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(cbars) == 1 and "firing rate" in cbars[0].get_ylabel()
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    token_images = [im for ax in panels for im in ax.get_images() if im.get_array().shape == (4, 4)]
    assert len(token_images) == 3 * 2
    assert {im.get_cmap().name for im in token_images} <= UNIFORM_CMAPS
    assert {im.get_interpolation() for im in token_images} == {"nearest"}
    assert len({(im.norm.vmin, im.norm.vmax) for im in token_images}) == 1  # one shared scale
    assert token_images[0].norm.vmax == pytest.approx(float(maps["blocks.0.attn"].max()))
    assert token_images[0].norm.vmin == 0
    for ax in panels[1:3]:  # grid lines between the 4 x 4 tokens
        assert list(ax.get_xticks(minor=True)) == [0.5, 1.5, 2.5]
    _close(fig)


def test_energy_units_from_the_magnitude() -> None:
    from spikformers.energy.report import energy_unit, format_energy

    assert energy_unit(2.5) == ("mJ", 1.0) and energy_unit(0.0015) == ("µJ", 1e-3)
    assert energy_unit(4.2e-5) == ("nJ", 1e-6) and energy_unit(3e-10)[0] == "pJ" and energy_unit(0)[0] == "mJ"
    assert format_energy(0.001523) == "1.523 µJ" and format_energy(0.001523, "nJ") == "1523.000 nJ"
    with pytest.raises(ValueError, match="energy unit"):
        format_energy(1.0, "kJ")


@pytest.mark.parametrize("scale, unit", [(10.0, "µJ"), (1.0, "nJ")])
def test_energy_figure_unit_and_one_colour_per_part(tiny_run, digits_batch, scale, unit) -> None:
    """Energies below 0.01 mJ are drawn in µJ (or nJ), the bars themselves, not only the label."""
    report = measure(tiny_run[1], digits_batch[0][:4], e_mac=4.6 * scale, e_ac=0.9 * scale)
    assert report.energy_mj < 1e-2
    size = {"µJ": 1e-3, "nJ": 1e-6}[unit]
    fig = energy_figure(report)
    ax, ax2 = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert ax.get_xlabel() == f"energy per image ({unit})" and ax2.get_ylabel() == f"energy per image ({unit})"
    assert f"{unit} per image" in ax.get_title() and "mJ" not in ax.get_title()
    # the bars add up to the total in that unit, in both panels
    assert sum(p.get_width() for p in ax.patches) == pytest.approx(report.energy_mj / size, rel=1e-6)
    assert sum(p.get_height() for p in ax2.patches) == pytest.approx(report.energy_mj / size, rel=1e-6)
    # each layer's bar has its network part's colour, the same as in the part panel and the firing figure
    n = len(report.layers)
    import matplotlib.colors as mc

    want = [mc.to_rgba(GROUP_COLORS[layer_group(r.name)]) for r in report.layers]
    assert [p.get_facecolor() for p in ax.patches[:n]] == want  # MAC parts (hatched)
    assert [p.get_facecolor() for p in ax.patches[n:]] == want  # AC parts
    firing = firing_figure(report)
    assert [p.get_facecolor() for p in firing.axes[0].patches] == want
    part_colours = {mc.to_hex(p.get_facecolor()) for p in ax2.patches}
    assert part_colours == {mc.to_hex(GROUP_COLORS[layer_group(r.name)]) for r in report.layers}
    _assert_legends_cover_no_axes(fig)
    _assert_legends_cover_no_axes(firing)
    _close(fig)
    _close(firing)


def test_raster_says_what_a_mark_means(tiny_run, digits_batch) -> None:
    _, model = tiny_run
    x = digits_batch[0][:2]
    assert default_raster_layers(model) == ["embed.stages.0.neuron", "embed.rpe_neuron", "blocks.0.attn.v.neuron",
                                            "blocks.0.mlp.fc2.neuron"]
    binary = ["embed.stages.0.neuron", "embed.rpe_neuron", "blocks.0.mlp.fc2.neuron"]
    fig = raster_figure(record_spikes(model, x, binary))
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts == ["spike (+1)", "no spike"]  # binary neurons only: no negative-spike entry
    for ax in fig.axes[:3]:
        assert ax.get_xlabel() == "time step" and ax.get_ylabel().startswith("neuron")
    _assert_legends_cover_no_axes(fig)
    _close(fig)
    ternary = record_spikes(model, x, ["blocks.0.attn.v.neuron"])  # A2OS2A's V is ternary
    alone = {}  # the first image's spikes are those of a forward of that image alone (eval: per-image norms)
    hook = model.blocks[0].attn.v.neuron.register_forward_hook(lambda m, a, y: alone.update(v=y[:, 0]))
    with torch.no_grad():
        model.eval()(x[:1])
    hook.remove()
    assert not torch.equal(x[0], x[1]) and ternary["blocks.0.attn.v.neuron"].shape[0] == 2  # [T, N, C], T = 2
    assert torch.equal(ternary["blocks.0.attn.v.neuron"], alone["v"]) and alone["v"].abs().sum() > 0
    fig = raster_figure(ternary)
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "negative spike (-1)" in texts
    _close(fig)
    with pytest.raises(ValueError, match="no neuron module"):
        record_spikes(model, x, ["nope"])


def test_curves_figure_labels_and_legend_outside(tmp_path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    fig = curves_figure(tmp_path / "metrics.csv", title="run")
    assert [ax.get_ylabel() for ax in fig.axes] == ["cross-entropy (nats)", "accuracy (%)", "learning rate"]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert all(float(t).is_integer() for ax in fig.axes for t in ax.get_xticks())  # whole epochs
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["train", "test", "best test 58.00% (epoch 3)"]
    _assert_legends_cover_no_axes(fig)
    _close(fig)


def test_attention_maps_are_firing_rates_and_qk_row_sums(tiny_run, digits_batch) -> None:
    """Output maps: the fraction of the attention output that is not zero per token, over T and channels; QK
    maps: the row sums of ``Q K^T`` per token, averaged over T. Both counted here by loops over tokens."""
    _, model = tiny_run
    x = digits_batch[0][:2]
    attn = model.blocks[0].attn
    seen: dict = {}
    hooks = [attn.register_forward_hook(lambda m, a, y: seen.update(out=y)),
             attn.q.register_forward_hook(lambda m, a, y: seen.update(q=y)),
             attn.k.register_forward_hook(lambda m, a, y: seen.update(k=y))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    out, q, k = seen["out"], seen["q"], seen["k"]  # [T, B, N, C] spikes
    T, B, N, C = out.shape
    rates = torch.tensor([[float((out[:, b, n] != 0).sum()) / (T * C) for n in range(N)] for b in range(B)])
    qk = torch.tensor([[sum(float((q[t, b, n][None, :] * k[t, b]).sum()) for t in range(T)) / T for n in range(N)]
                       for b in range(B)])
    side = int(N**0.5)
    got, got_qk = attention_maps(model, x, "output")["blocks.0.attn"], attention_maps(model, x, "qk")["blocks.0.attn"]
    assert 0 < rates.max() < 1 and torch.allclose(got, rates.view(B, side, side), atol=1e-6)
    assert qk.max() > 0 and torch.allclose(got_qk, qk.view(B, side, side), atol=1e-4)


def test_attention_maps_on_hierarchical_model(digits_batch) -> None:
    torch.manual_seed(0)
    model = create_model("spiliformer_2_64_cifar", img_size=16, in_chans=1, num_classes=10).eval()
    maps = attention_maps(model, digits_batch[0][:2])
    assert maps["stage1.0.attn"].shape == (2, 16, 16) and maps["stage3.0.attn"].shape == (2, 4, 4)


# ---------------------------------------------------------------------------------------------------------
def test_plot_and_energy_report_the_same_numbers(tiny_run, tmp_path, capsys) -> None:
    """Both commands measure the same test images by default (and with the same ``--images``)."""
    run, _ = tiny_run
    for extra in ([], ["--images", "8", "--batch-size", "3"]):
        assert main(["energy", "--checkpoint", str(run), "--json", str(tmp_path / "e.json"), *extra]) == 0
        energy_last = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["plot", str(run), "--energy", "--out", str(tmp_path / "p"), *extra]) == 0
        plot_lines = capsys.readouterr().out.strip().splitlines()
        a = json.loads((tmp_path / "e.json").read_text())
        b = json.loads((tmp_path / "p" / "energy.json").read_text())
        assert a["images"] == b["images"] == (8 if extra else 64)
        for key in ("total_sops", "total_macs", "energy_mj"):
            assert a[key] == b[key], key
        assert [r["sops"] for r in a["layers"]] == [r["sops"] for r in b["layers"]]
        assert energy_last in plot_lines and f"{a['energy_mj'] * 1e6:.3f} nJ per image" in energy_last


def test_plot_command_formats_dpi_and_errors(tiny_run, tmp_path, capsys) -> None:
    run, _ = tiny_run
    assert main(["plot", str(run), "--out", str(tmp_path / "a")]) == 0
    w200, _ = _png_size(tmp_path / "a" / "curves.png")
    assert main(["plot", str(run), "--dpi", "100", "--out", str(tmp_path / "b")]) == 0
    w100, _ = _png_size(tmp_path / "b" / "curves.png")
    assert w200 / w100 == pytest.approx(2.0, rel=0.05)  # default 200 dpi
    assert main(["plot", str(run), "--all", "--format", "pdf", "--attention-images", "2", "--images", "4",
                 "--batch-size", "4", "--out", str(tmp_path / "c")]) == 0
    for name in ("curves", "firing", "energy", "raster", "attention_output"):
        assert (tmp_path / "c" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("wrote 5 figures")
    assert main(["plot", str(run), "--energy", "--images", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--images must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", str(run), "--format", "jpg"])


def test_every_option_of_plot_energy_compare_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("plot", "energy", "compare"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"
