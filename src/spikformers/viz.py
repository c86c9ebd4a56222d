"""Every picture the library draws, and the ``spikformers plot`` command.

* training curves of a run (``metrics.csv``): loss, accuracy and learning rate per epoch;
* firing rate of each layer's input, and the energy of each layer (MAC and AC parts), from an energy report;
* spike rasters: which neurons of chosen neuron layers fire at which time step, for one image;
* attention maps: per token, the attention module's output firing rate (mean over T and channels;
  ``mode="output"``) or the row sums of ``Q K^T`` (``mode="qk"``, modules with ``q``/``k`` projections), drawn
  as the cells of the token grid beside the input image, like SpiLiFormer's attention figure.

Figures meant for a paper: perceptually uniform colour maps (viridis) on one shared, labelled colour scale, one
colour per network part in every panel, energies in the unit their size calls for (µJ, not 0.00152 mJ), legends
outside the data, :data:`DPI` dots per inch, PNG, PDF or SVG. Each ``*_figure`` function returns the matplotlib
figure; each ``plot_*`` function draws it and writes it to a file, the format taken from the file's suffix.
matplotlib is imported only when a picture is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cli import command

__all__ = [
    "curves_figure", "firing_figure", "energy_figure", "raster_figure", "attention_figure",
    "plot_curves", "plot_firing", "plot_energy", "record_spikes", "plot_raster", "attention_maps",
    "plot_attention", "GROUP_COLORS", "DPI", "FORMATS",
]  # fmt: skip

DPI = 200
FORMATS = ("png", "pdf", "svg")
CMAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers
# one colour per network part, in every figure (Okabe-Ito, colour-blind safe)
GROUP_COLORS = {"embed": "#0072B2", "attention": "#E69F00", "mlp": "#009E73", "feedback": "#CC79A7",
                "head": "#D55E00", "other": "#999999"}
TRAIN_COLOR, TEST_COLOR = "#0072B2", "#D55E00"
MAC_HATCH = "////"  # the MAC part of an energy bar; the AC part is solid


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (PNG, PDF or SVG by its suffix) and close it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        _plt().close(fig)
        raise ValueError(f"{path}: figures are written as {', '.join(FORMATS)}, not {fmt or 'a file without suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def _legend_outside(ax: Any, handles: list[Any], **kw: Any) -> Any:
    """A legend right of ``ax``, outside its data area."""
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                     fontsize=8, **kw)


def _group_handles(groups: set[str]) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(facecolor=GROUP_COLORS[g], label=g) for g in GROUP_COLORS if g in groups]


# ---------------------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Columns of a run's ``metrics.csv`` as float lists (empty cells become NaN)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in rows[0]}


def curves_figure(metrics: str | Path, title: str = "") -> Any:
    """Training curves from ``metrics.csv``: loss, accuracy (train and test, best test epoch marked) and learning
    rate per epoch; one legend above the panels."""
    from matplotlib.ticker import MaxNLocator

    m = read_metrics(metrics)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    ep = m["epoch"]
    axes[0].plot(ep, m["train_loss"], "o-", color=TRAIN_COLOR, label="train")
    axes[0].plot(ep, m["test_loss"], "s-", color=TEST_COLOR, label="test")
    axes[0].set(title="loss", xlabel="epoch", ylabel="cross-entropy (nats)")
    axes[1].plot(ep, m["train_acc"], "o-", color=TRAIN_COLOR)
    axes[1].plot(ep, m["test_acc"], "s-", color=TEST_COLOR)
    accs = [a if a == a else -math.inf for a in m["test_acc"]]  # NaN never best
    best = max(range(len(ep)), key=lambda i: accs[i])
    axes[1].plot(ep[best], m["test_acc"][best], "*", ms=13, color=TEST_COLOR, mec="k", ls="none",
                 label=f"best test {m['test_acc'][best]:.2f}% (epoch {ep[best]:g})")
    axes[1].set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    axes[2].plot(ep, m["lr"], "-", color="k")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = axes[0].get_legend_handles_labels()[0] + axes[1].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_curves(metrics: str | Path, out: str | Path, title: str = "", dpi: int = DPI) -> Path:
    """Draw :func:`curves_figure` into ``out``."""
    return _save(curves_figure(metrics, title), out, dpi)


# ---------------------------------------------------------------------------------------------------------
def firing_figure(report: Any) -> Any:
    """Bar chart of the firing rate of each layer's input (operands of products), coloured by network part."""
    from .energy.report import layer_group

    rows = report.layers
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.6), layout="constrained")
    y = list(range(len(rows)))
    ax.barh(y, [r.firing_rate for r in rows], color=[GROUP_COLORS[layer_group(r.name)] for r in rows])
    ax.set_yticks(y, [f"{r.name}  [{r.operands}]" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("firing rate of the input (fraction of nonzero operands; 1 for real-valued MAC inputs)")
    ax.set_ylabel("layer  [operand types]")
    ax.set_title(f"{report.model}, T={report.T}: firing rate per layer ({report.images} images)", fontsize=10)
    _legend_outside(ax, _group_handles({layer_group(r.name) for r in rows}), title="network part")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_firing(report: Any, out: str | Path, dpi: int = DPI) -> Path:
    """Draw :func:`firing_figure` into ``out``."""
    return _save(firing_figure(report), out, dpi)


def energy_figure(report: Any) -> Any:
    """Per-layer energy per image, its MAC part hatched and its AC part solid, coloured by network part; and the
    total of each part. One energy unit for both panels, picked from the total (:func:`energy_unit`)."""
    from matplotlib.patches import Patch

    from .energy.report import energy_unit, format_energy, layer_group

    rows = report.layers
    unit, size = energy_unit(report.energy_mj)
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.22 * len(rows) + 1.9), width_ratios=[3, 1],
                                  layout="constrained")
    y = list(range(len(rows)))
    groups = [layer_group(r.name) for r in rows]
    colors = [GROUP_COLORS[g] for g in groups]
    mac = [report.e_mac_pj * r.macs * 1e-9 / size for r in rows]
    ac = [report.e_ac_pj * r.acs * 1e-9 / size for r in rows]
    ax.barh(y, mac, color=colors, hatch=MAC_HATCH, edgecolor="white", linewidth=0)
    ax.barh(y, ac, left=mac, color=colors)
    ax.set_yticks(y, [r.name for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"energy per image ({unit})")
    ax.set_ylabel("layer")
    ax.set_title(f"{report.model}, T={report.T}: {format_energy(report.energy_mj)} per image, "
                 f"{report.total_sops / 1e6:.2f} M SOPs ({report.images} images)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    # per part: MAC and AC energy, largest part first
    part_mac: dict[str, float] = {}
    part_ac: dict[str, float] = {}
    for g, a, b in zip(groups, mac, ac):
        part_mac[g] = part_mac.get(g, 0.0) + a
        part_ac[g] = part_ac.get(g, 0.0) + b
    order = sorted(part_mac, key=lambda g: -(part_mac[g] + part_ac[g]))
    xs = list(range(len(order)))
    ax2.bar(xs, [part_mac[g] for g in order], color=[GROUP_COLORS[g] for g in order], hatch=MAC_HATCH,
            edgecolor="white", linewidth=0)
    ax2.bar(xs, [part_ac[g] for g in order], bottom=[part_mac[g] for g in order],
            color=[GROUP_COLORS[g] for g in order])
    total = max(report.energy_mj / size, 1e-30)
    for i, g in enumerate(order):
        share = 100 * (part_mac[g] + part_ac[g]) / total
        text = "<1%" if 0 < share < 0.5 else f"{share:.0f}%"
        ax2.text(i, part_mac[g] + part_ac[g], text, ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(xs, order, rotation=45)
    ax2.set_ylabel(f"energy per image ({unit})")
    ax2.set_title("by network part", fontsize=10)
    ax2.margins(y=0.12)  # room for the percentages
    ax2.grid(axis="y", alpha=0.3)
    kinds = [Patch(facecolor="#bbbbbb", hatch=MAC_HATCH, edgecolor="white", label=f"MAC ({report.e_mac_pj} pJ each)"),
             Patch(facecolor="#bbbbbb", label=f"AC ({report.e_ac_pj} pJ each)")]
    _legend_outside(ax2, _group_handles(set(groups)) + kinds, title="part / operation")
    return fig


def plot_energy(report: Any, out: str | Path, dpi: int = DPI) -> Path:
    """Draw :func:`energy_figure` into ``out``."""
    return _save(energy_figure(report), out, dpi)


# ---------------------------------------------------------------------------------------------------------
def _run_once_in_eval(model: nn.Module, x: torch.Tensor, handles: list[Any]) -> None:
    """One forward pass in eval mode with the given hooks; the mode is restored and the hooks removed after."""
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


@torch.no_grad()
def record_spikes(model: nn.Module, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Outputs ``[T, ...]`` (first image) of the named neuron modules (default: every neuron) on one forward."""
    from .neurons import Neuron

    modules = {n: m for n, m in model.named_modules() if isinstance(m, Neuron)}
    if names:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no neuron module named {missing}; neuron modules are e.g. {list(modules)[:6]}")
        modules = {n: modules[n] for n in names}
    out: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(m: nn.Module, args: Any, y: torch.Tensor) -> None:
            if name not in out:  # first pass of multi-pass models
                out[name] = y[:, 0].detach().cpu() if y.dim() > 1 else y.detach().cpu()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    _run_once_in_eval(model, x, handles)
    return out


def raster_figure(spikes: dict[str, torch.Tensor], neurons: int = 48, title: str = "") -> Any:
    """Spike rasters: per layer, up to ``neurons`` of its neurons that fire at least once (evenly sampled, ordered
    by first spike) as rows, time steps as columns; black = spike (+1), red = negative spike (-1, ternary
    neurons), white = no spike. A legend below the panels says so."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _plt()
    n = len(spikes)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    cmap = ListedColormap(["#c00000", "white", "black"])
    negative = False
    for ax, (name, s) in zip(axes.flat, spikes.items()):
        T = s.shape[0]
        flat = s.reshape(T, -1).float()
        negative |= bool((flat < 0).any())
        fired = (flat != 0).any(0).nonzero().flatten()
        k = min(neurons, fired.numel())
        pick = fired[torch.linspace(0, fired.numel() - 1, k).round().long()] if k else fired
        sel = flat[:, pick]  # [T, k]
        first = torch.where(sel != 0, torch.arange(T)[:, None], T).min(0).values if k else pick
        sel = sel[:, first.argsort(stable=True)] if k else sel
        if k:
            ax.imshow(sel.T.sign().numpy(), cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest",
                      extent=(-0.5, T - 0.5, k - 0.5, -0.5))
        else:
            ax.set(xlim=(-0.5, T - 0.5), yticks=[])
            ax.text(0.5, 0.5, "no neuron fires", transform=ax.transAxes, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(T))
        ax.set_xticks([t + 0.5 for t in range(T - 1)], minor=True)
        ax.grid(which="minor", axis="x", color="#bbbbbb", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("time step")
        ax.set_ylabel(f"neuron (row; {k} of the {fired.numel()} that fire, of {flat.shape[1]})", fontsize=7)
        rate = float((flat != 0).float().mean())
        real = bool((flat.abs() != flat.abs().round()).any())  # real-valued outputs: only their sign is drawn
        ax.set_title(f"{name}\n{'real-valued, sign shown; ' if real else ''}firing rate {rate:.3f}", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    marks = [Patch(facecolor="black", label="spike (+1)"),
             Patch(facecolor="white", edgecolor="#888888", label="no spike")]
    if negative:
        marks.insert(1, Patch(facecolor="#c00000", label="negative spike (-1)"))
    fig.legend(handles=marks, loc="outside lower center", ncol=len(marks), fontsize=8, frameon=False,
               title="one row = one neuron, one column = one time step", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_raster(spikes: dict[str, torch.Tensor], out: str | Path, neurons: int = 48, title: str = "",
                dpi: int = DPI) -> Path:
    """Draw :func:`raster_figure` into ``out``."""
    return _save(raster_figure(spikes, neurons, title), out, dpi)


def default_raster_layers(model: nn.Module, count: int = 4) -> list[str]:
    """A few neuron layers spread through the network: first, some in the middle, and the last."""
    from .neurons import Neuron

    names = [n for n, m in model.named_modules() if isinstance(m, Neuron)]
    if len(names) <= count:
        return names
    picks = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})
    return [names[i] for i in picks]


# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, mode: str = "output") -> dict[str, torch.Tensor]:
    """Per attention module, a token score map ``[B, h, w]`` on its square token grid (see module doc).

    ``mode="output"``: firing rate of the module's output per token (mean over T and channels);
    ``mode="qk"``: ``Q K^T`` row sums per token (mean over T; ``sum_m Q_n . K_m``), for modules with ``q``/``k``.
    In multi-pass models the first pass is shown.
    """
    from .attention import ATTENTIONS

    if mode not in ("output", "qk"):
        raise ValueError(f"attention map mode must be 'output' or 'qk', got {mode!r}")
    kinds = tuple(ATTENTIONS.values())
    mods = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    grabbed: dict[str, dict[str, torch.Tensor]] = {n: {} for n in mods}
    handles = []

    def keep(name: str, key: str) -> Any:
        def fn(m: nn.Module, args: Any, y: torch.Tensor) -> None:
            grabbed[name].setdefault(key, y.detach().float().cpu())
        return fn

    for n, m in mods.items():
        if mode == "output":
            handles.append(m.register_forward_hook(keep(n, "out")))
        elif hasattr(m, "q") and hasattr(m, "k"):
            handles.append(m.q.register_forward_hook(keep(n, "q")))
            handles.append(m.k.register_forward_hook(keep(n, "k")))
    _run_once_in_eval(model, x, handles)
    maps: dict[str, torch.Tensor] = {}
    for n, g in grabbed.items():
        if mode == "output" and "out" in g:
            score = g["out"].abs().mean(dim=(0, 3))  # [B, N]
        elif mode == "qk" and "q" in g and "k" in g:
            q, k = g["q"], g["k"]  # [T, B, N, C]
            score = (q * k.sum(2, keepdim=True)).sum(-1).mean(0)  # row sums of Q K^T, all heads: [B, N]
        else:
            continue
        side = math.isqrt(score.shape[1])
        if side * side != score.shape[1]:
            continue  # not a square token grid
        maps[n] = score.view(-1, side, side)
    return maps


def _show_image(ax: Any, img: torch.Tensor) -> None:
    img = img.float()
    img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", interpolation="nearest")
    elif img.shape[0] == 3:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:  # event frames [2, H, W]: ON - OFF
        ax.imshow((img[-1] - img[0]).numpy(), cmap="gray", interpolation="nearest")


ATTENTION_LABELS = {
    "output": "attention output per token: firing rate (mean |output| over T and channels)",
    "qk": "attention per token: row sum of Q K$^T$ (mean over T)",
}


def attention_figure(images: torch.Tensor, maps: dict[str, torch.Tensor], mode: str = "output",
                     title: str = "") -> Any:
    """Token maps as the cells of each module's token grid: one row per image (the input first), one column per
    attention module. Every panel shares one colour scale (0 to the largest score of any panel) and one labelled
    colorbar, so panels compare directly; the cells are drawn as they are (no smoothing), with grid lines between
    tokens."""
    from matplotlib.colors import Normalize

    plt = _plt()
    n_img = min(images.shape[0], *(m.shape[0] for m in maps.values())) if maps else images.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n_img, cols, figsize=(2.0 * cols + 1.2, 2.0 * n_img + 0.6), squeeze=False,
                             layout="constrained")
    scores = [m[:n_img] for m in maps.values()]
    lo = min([0.0] + [float(m.min()) for m in scores])
    hi = max([lo] + [float(m.max()) for m in scores])
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)  # one scale for every panel
    sides = {m.shape[-1] for m in maps.values()}
    im = None
    for i in range(n_img):
        _show_image(axes[i, 0], images[i])
        if len(sides) == 1:  # every module has the same grid: show it on the input too
            H, W = images.shape[-2:]
            side = next(iter(sides))
            axes[i, 0].set_xticks([k * W / side - 0.5 for k in range(1, side)], minor=True)
            axes[i, 0].set_yticks([k * H / side - 0.5 for k in range(1, side)], minor=True)
            axes[i, 0].grid(which="minor", color="#e69f00", linewidth=0.6, alpha=0.8)
        axes[i, 0].set_ylabel(f"test image {i + 1}", fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            side = m.shape[-1]
            im = ax.imshow(m[i].numpy(), cmap=CMAP, norm=norm, interpolation="nearest")
            ax.set_xticks([k - 0.5 for k in range(1, side)], minor=True)
            ax.set_yticks([k - 0.5 for k in range(1, side)], minor=True)
            ax.grid(which="minor", color="white", linewidth=0.6 if side <= 8 else 0.3, alpha=0.7)
            if i == 0:
                ax.set_title(f"{name}\n{side}x{side} tokens", fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.tick_params(which="both", length=0)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 1:], shrink=0.8, label=ATTENTION_LABELS.get(mode, "token score"))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_attention(images: torch.Tensor, maps: dict[str, torch.Tensor], out: str | Path, title: str = "",
                   mode: str = "output", dpi: int = DPI) -> Path:
    """Draw :func:`attention_figure` into ``out``."""
    return _save(attention_figure(images, maps, mode, title), out, dpi)


# ---------------------------------------------------------------------------------------------------------
def _plot_args(p: argparse.ArgumentParser) -> None:
    from .energy.cli import add_sample_args

    p.add_argument("run_dir", metavar="RUN", help="run folder (metrics.csv, config.yaml, weights)")
    p.add_argument("--curves", action="store_true", help="training curves (the default when nothing is asked)")
    p.add_argument("--firing", action="store_true", help="firing rate per layer")
    p.add_argument("--energy", action="store_true",
                   help="per-layer energy breakdown (also writes energy.json, as `spikformers energy --json`)")
    p.add_argument("--raster", action="store_true", help="spike rasters of chosen neuron layers, for one test image")
    p.add_argument("--attention", action="store_true", help="attention maps of the first test images")
    p.add_argument("--all", action="store_true", help="every figure")
    p.add_argument("--out", help="output folder (default RUN/plots)")
    p.add_argument("--format", default="png", choices=FORMATS, help="file format of the figures (default png)")
    p.add_argument("--dpi", type=int, default=DPI,
                   help=f"dots per inch of png figures and of the images inside pdf/svg ones (default {DPI})")
    p.add_argument("--which", default="last", choices=["last", "best"], help="weights of the run (default last)")
    p.add_argument("--data", help="dataset of the input images (default: the run's)")
    p.add_argument("--data-dir", help="dataset root folder (default: the run's)")
    add_sample_args(p)
    p.add_argument("--attention-images", type=int, default=4, metavar="N",
                   help="test images (rows) in the attention figure (default 4)")
    p.add_argument("--raster-layers", nargs="+", metavar="MODULE",
                   help="neuron module paths for the rasters (default: 4 spread through the network)")
    p.add_argument("--attention-mode", default="output", choices=["output", "qk"],
                   help="token score: output firing rate (default) or Q K^T row sums")


@command("plot", "draw a run's training curves, firing rates, energy, spike rasters, attention maps", _plot_args)
def _plot(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run / "plots"
    if args.dpi < 1:
        raise ValueError(f"--dpi must be a positive number of dots per inch, got {args.dpi}")
    if args.attention_images < 1:
        raise ValueError(f"--attention-images must be a positive number of images, got {args.attention_images}")
    want = {k: getattr(args, k) or args.all for k in ("curves", "firing", "energy", "raster", "attention")}
    if not any(want.values()):
        want["curves"] = True
    ext, dpi = args.format, args.dpi
    written: list[Path] = []
    if want["curves"]:
        if not (run / "metrics.csv").exists():
            raise FileNotFoundError(f"{run}: no metrics.csv to draw training curves from")
        written.append(plot_curves(run / "metrics.csv", out / f"curves.{ext}", title=str(run), dpi=dpi))
    report = model = None
    if want["firing"] or want["energy"]:
        from .energy.cli import checkpoint_report

        # the same measurement, on the same test images, as `spikformers energy --checkpoint RUN`
        report, model = checkpoint_report(run, args.which, args.data, args.data_dir, args.images, args.batch_size)
        if want["firing"]:
            written.append(plot_firing(report, out / f"firing.{ext}", dpi=dpi))
        if want["energy"]:
            written.append(plot_energy(report, out / f"energy.{ext}", dpi=dpi))
            out.mkdir(parents=True, exist_ok=True)
            report.write_json(out / "energy.json")
            written.append(out / "energy.json")
    if want["raster"] or want["attention"]:
        from .energy.cli import checkpoint_data, sample_batches
        from .train.checkpoint import load_model, resolve_checkpoint

        run_dir, weights = resolve_checkpoint(run, args.which)
        if model is None:
            model = load_model(run_dir, which=weights.stem)
        name, root, opts = checkpoint_data(run_dir, model, args.data, args.data_dir)
        xs, _ = sample_batches(name, root, opts, args.attention_images, args.attention_images,
                               getattr(model, "T", None))
        x = xs[0]
        arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        attn = getattr(model, "default_cfg", {}).get("config", {}).get("attn", "")
        label = f"{arch} {attn}".strip()
        if want["raster"]:
            layers = args.raster_layers or default_raster_layers(model)
            written.append(plot_raster(record_spikes(model, x, layers), out / f"raster.{ext}",
                                       title=f"{label}: spikes of the first {name} test image", dpi=dpi))
        if want["attention"]:
            images = x if x.dim() == 4 else x.sum(0)  # event frames: counts over time
            maps = attention_maps(model, x, args.attention_mode)
            written.append(plot_attention(images, maps, out / f"attention_{args.attention_mode}.{ext}",
                                          title=f"{label}: attention ({args.attention_mode}) on {name} test images",
                                          mode=args.attention_mode, dpi=dpi))
    for p in written:
        print(f"wrote {p}")
    if report is not None:
        print(report.summary_line())
    figures = sum(p.suffix != ".json" for p in written)
    print(f"wrote {figures} figure{'' if figures == 1 else 's'} to {out}")
    return 0
