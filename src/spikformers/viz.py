"""Every picture the library draws, as PNG files, and the ``spikformers plot`` command.

* training curves of a run (``metrics.csv``): loss, accuracy and learning rate per epoch;
* firing rate of each layer's input, and the energy of each layer (MAC and AC parts), from an energy report;
* spike rasters: which neurons of chosen neuron layers fire at which time step, for one image;
* attention heatmaps over the input image: per token, the attention module's output firing rate (mean over
  T and channels; ``mode="output"``) or the row sums of ``Q K^T`` (``mode="qk"``, modules with ``q``/``k``
  projections), upsampled from the token grid onto the image, like SpiLiFormer's attention figure.

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
    "plot_curves", "plot_firing", "plot_energy", "record_spikes", "plot_raster", "attention_maps",
    "plot_attention",
]  # fmt: skip

GROUP_COLORS = {"embed": "#4c72b0", "attention": "#dd8452", "mlp": "#55a868", "feedback": "#8172b3",
                "head": "#937860", "other": "#8c8c8c"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Columns of a run's ``metrics.csv`` as float lists (empty cells become NaN)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in rows[0]}


def plot_curves(metrics: str | Path, out: str | Path, title: str = "") -> Path:
    """Training curves from ``metrics.csv``: loss, accuracy (train and test) and learning rate per epoch."""
    m = read_metrics(metrics)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = m["epoch"]
    axes[0].plot(ep, m["train_loss"], "o-", label="train")
    axes[0].plot(ep, m["test_loss"], "s-", label="test")
    axes[0].set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    axes[1].plot(ep, m["train_acc"], "o-", label="train")
    axes[1].plot(ep, m["test_acc"], "s-", label="test")
    best = max(range(len(ep)), key=lambda i: m["test_acc"][i])
    axes[1].annotate(f"best {m['test_acc'][best]:.2f}%", (ep[best], m["test_acc"][best]),
                     textcoords="offset points", xytext=(-30, -15))
    axes[1].set(title="accuracy", xlabel="epoch", ylabel="%")
    axes[2].plot(ep, m["lr"], "-", color="k")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------------------
def plot_firing(report: Any, out: str | Path) -> Path:
    """Bar chart of the firing rate of each layer's input (operands of products), coloured by network part."""
    from .energy.report import layer_group

    rows = report.layers
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
    y = range(len(rows))
    colors = [GROUP_COLORS[layer_group(r.name)] for r in rows]
    ax.barh(list(y), [r.firing_rate for r in rows], color=colors)
    ax.set_yticks(list(y), [f"{r.name}  [{r.operands}]" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("firing rate of the input (fraction of nonzero operands; 1 for real-valued MAC inputs)")
    ax.set_title(f"{report.model}, T={report.T}: firing rate per layer")
    _legend(ax, {layer_group(r.name) for r in rows})
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def _legend(ax: Any, groups: set[str]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=GROUP_COLORS[g], label=g) for g in GROUP_COLORS if g in groups],
              loc="lower right", fontsize=8)


def plot_energy(report: Any, out: str | Path) -> Path:
    """Per-layer energy (mJ per image), split into its MAC and AC parts, and the total per network part."""
    rows = report.layers
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.22 * len(rows) + 1.8), width_ratios=[3, 1])
    y = list(range(len(rows)))
    mac = [report.e_mac_pj * r.macs * 1e-9 for r in rows]
    ac = [report.e_ac_pj * r.acs * 1e-9 for r in rows]
    ax.barh(y, mac, color="#c44e52", label=f"MAC ({report.e_mac_pj} pJ each)")
    ax.barh(y, ac, left=mac, color="#4c72b0", label=f"AC ({report.e_ac_pj} pJ each)")
    ax.set_yticks(y, [r.name for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("energy per image (mJ)")
    ax.set_title(f"{report.model}, T={report.T}: {report.energy_mj:.4f} mJ per image, "
                 f"{report.total_sops / 1e6:.2f} M SOPs")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    groups = sorted(report.groups().items(), key=lambda kv: -kv[1])
    ax2.bar([g for g, _ in groups], [e for _, e in groups], color=[GROUP_COLORS.get(g, "#8c8c8c") for g, _ in groups])
    total = max(report.energy_mj, 1e-30)
    for i, (_, e) in enumerate(groups):
        ax2.text(i, e, f"{100 * e / total:.0f}%", ha="center", va="bottom", fontsize=8)
    ax2.set_title("by part (mJ)")
    ax2.tick_params(axis="x", rotation=45)
    return _save(fig, out)


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


def plot_raster(spikes: dict[str, torch.Tensor], out: str | Path, neurons: int = 48, title: str = "") -> Path:
    """Spike rasters: per layer, up to ``neurons`` of its neurons that fire at least once (evenly sampled, ordered
    by first spike) as rows, time steps as columns; black = +1, red = -1 (ternary), white = silent."""
    from matplotlib.colors import ListedColormap

    plt = _plt()
    n = len(spikes)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False)
    cmap = ListedColormap(["#c44e52", "white", "black"])
    for ax, (name, s) in zip(axes.flat, spikes.items()):
        T = s.shape[0]
        flat = s.reshape(T, -1).float()
        fired = (flat != 0).any(0).nonzero().flatten()
        k = min(neurons, fired.numel())
        pick = fired[torch.linspace(0, fired.numel() - 1, k).round().long()] if k else fired
        sel = flat[:, pick]  # [T, k]
        first = torch.where(sel != 0, torch.arange(T)[:, None], T).min(0).values if k else pick
        sel = sel[:, first.argsort(stable=True)] if k else sel
        ax.imshow(sel.T.sign().numpy(), cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(T))
        ax.set_xticks([t + 0.5 for t in range(T - 1)], minor=True)
        ax.grid(which="minor", axis="x", color="#bbbbbb", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("time step")
        ax.set_ylabel(f"neuron ({k} of the {fired.numel()} that fire, of {flat.shape[1]})", fontsize=7)
        rate = float((flat != 0).float().mean())
        ax.set_title(f"{name}\nrate {rate:.3f}", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


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
        ax.imshow(img[0].numpy(), cmap="gray")
    elif img.shape[0] == 3:
        ax.imshow(img.permute(1, 2, 0).numpy())
    else:  # event frames [2, H, W]: ON - OFF
        ax.imshow((img[-1] - img[0]).numpy(), cmap="gray")


def plot_attention(images: torch.Tensor, maps: dict[str, torch.Tensor], out: str | Path, title: str = "") -> Path:
    """Heatmaps of the token maps upsampled onto each image: one row per image, one column per attention module.

    Each panel is scaled to its own maximum (printed in its corner), so that where a module attends is visible
    even where it fires little.
    """
    plt = _plt()
    n_img = min(images.shape[0], *(m.shape[0] for m in maps.values())) if maps else images.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n_img, cols, figsize=(2.2 * cols, 2.3 * n_img), squeeze=False)
    H, W = images.shape[-2:]
    for i in range(n_img):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            up = nn.functional.interpolate(m[i][None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            peak = float(m[i].max())
            _show_image(axes[i, j], images[i])
            im = axes[i, j].imshow((up / peak if peak > 0 else up).numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].text(0.02, 0.02, f"max {peak:.3g}", transform=axes[i, j].transAxes, fontsize=6,
                            color="white", bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
            if i == 0:
                axes[i, j].set_title(f"{name}\n{m.shape[-1]}x{m.shape[-1]} tokens", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if maps:
        fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.6, label="token score / panel max")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------------------
def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder (metrics.csv, config.yaml, weights)")
    p.add_argument("--curves", action="store_true", help="training curves (the default when nothing is asked)")
    p.add_argument("--firing", action="store_true", help="firing rate per layer")
    p.add_argument("--energy", action="store_true", help="per-layer energy breakdown")
    p.add_argument("--raster", action="store_true", help="spike rasters of chosen neuron layers")
    p.add_argument("--attention", action="store_true", help="attention heatmaps over input images")
    p.add_argument("--all", action="store_true", help="every picture")
    p.add_argument("--out", help="output folder (default RUN/plots)")
    p.add_argument("--which", default="last", choices=["last", "best"], help="weights of the run")
    p.add_argument("--data", help="dataset of the input images (default: the run's)")
    p.add_argument("--data-dir", help="dataset root (default: the run's)")
    p.add_argument("--images", type=int, default=4, help="images in the attention figure (default 4)")
    p.add_argument("--batches", type=int, default=1, help="test batches for firing/energy (default 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--raster-layers", nargs="+", help="neuron module paths for the rasters (default: 4 spread out)")
    p.add_argument("--attention-mode", default="output", choices=["output", "qk"],
                   help="token score: output firing rate (default) or Q K^T row sums")


@command("plot", "draw a run's training curves, firing rates, energy, spike rasters, attention heatmaps", _plot_args)
def _plot(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run / "plots"
    want = {k: getattr(args, k) or args.all for k in ("curves", "firing", "energy", "raster", "attention")}
    if not any(want.values()):
        want["curves"] = True
    written: list[Path] = []
    if want["curves"]:
        if not (run / "metrics.csv").exists():
            raise FileNotFoundError(f"{run}: no metrics.csv to draw training curves from")
        written.append(plot_curves(run / "metrics.csv", out / "curves.png", title=str(run)))
    report = model = None
    if want["firing"] or want["energy"]:
        from .energy.cli import checkpoint_report

        report, model = checkpoint_report(run, args.which, args.data, args.data_dir, args.batches, args.batch_size)
        if want["firing"]:
            written.append(plot_firing(report, out / "firing.png"))
        if want["energy"]:
            written.append(plot_energy(report, out / "energy.png"))
    if want["raster"] or want["attention"]:
        from .energy.cli import _test_batches, run_config
        from .train.checkpoint import load_model, resolve_checkpoint

        run_dir, weights = resolve_checkpoint(run, args.which)
        if model is None:
            model = load_model(run_dir, which=weights.stem)
        cfg = run_config(run_dir)
        opts = dict(cfg.data.kwargs)
        if getattr(model, "img_size", None):
            opts["img_size"] = model.img_size
        name = args.data or cfg.data.name
        xs, _ = _test_batches(name, args.data_dir or cfg.data.root, opts, 1, args.images, getattr(model, "T", None))
        x = xs[0]
        arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        attn = getattr(model, "default_cfg", {}).get("config", {}).get("attn", "")
        label = f"{arch} {attn}".strip()
        if want["raster"]:
            layers = args.raster_layers or default_raster_layers(model)
            written.append(plot_raster(record_spikes(model, x, layers), out / "raster.png",
                                       title=f"{label}: spikes of one {name} test image"))
        if want["attention"]:
            images = x if x.dim() == 4 else x.sum(0)  # event frames: counts over time
            maps = attention_maps(model, x, args.attention_mode)
            written.append(plot_attention(images, maps, out / f"attention_{args.attention_mode}.png",
                                          title=f"{label}: attention ({args.attention_mode}) on {name} test images"))
    for p in written:
        print(f"wrote {p}")
    print(f"wrote {len(written)} figures to {out}")
    return 0
