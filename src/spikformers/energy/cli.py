"""``spikformers energy`` (per-layer operations and energy of a run or an architecture) and ``spikformers compare``.

``energy --checkpoint RUN``: the run's model and weights on real images of its dataset's test split (from the
run's ``config.yaml``, or ``--data``). ``energy --model NAME``: a randomly initialised model, for comparing
architectures; its input is uniform random noise in [0, 1) (seeded), or real test images with ``--data``
(the model is then sized for that dataset). Its batch norms take their statistics from that input first
(:func:`calibrate_bn`), so that it fires; its firing rates still reflect random weights, not training.

The sample is the first ``--images`` images of the test split (default :data:`DEFAULT_IMAGES`), in batches of
``--batch-size``; ``spikformers plot`` measures the same sample through the same :func:`checkpoint_report`, so
both commands report the same firing rates, SOPs and energy for a run.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cli import command
from .report import E_AC_PJ, E_MAC_PJ, EnergyReport, energy_unit, format_energy, measure

DEFAULT_IMAGES = 64  # test images that firing rates, SOPs and energy are averaged over, in every command
DEFAULT_BATCH_SIZE = 32


def add_sample_args(p: argparse.ArgumentParser) -> None:
    """``--images`` and ``--batch-size``: the sample of test images measured, the same in every command."""
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"average firing rates, SOPs and energy over the first N test images (default "
                        f"{DEFAULT_IMAGES}; the same default in energy, compare and plot)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per forward pass while measuring (default {DEFAULT_BATCH_SIZE})")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset of the input images (default: the run's; --model: random noise)")
    p.add_argument("--data-dir", help="dataset root folder (default: the run's)")
    add_sample_args(p)
    p.add_argument("--e-mac", type=float, default=E_MAC_PJ, help=f"energy of a MAC in pJ (default {E_MAC_PJ})")
    p.add_argument("--e-ac", type=float, default=E_AC_PJ, help=f"energy of an AC in pJ (default {E_AC_PJ})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto (CUDA if present)")


def _energy_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run folder (or .safetensors file inside one)")
    src.add_argument("--model", help="registry name, randomly initialised (e.g. spikformer_8_768)")
    p.add_argument("--which", default="last", choices=["last", "best"], help="weights of a run folder")
    p.add_argument("--attn", help="--model: attention mechanism to plug in")
    p.add_argument("--T", type=int, nargs="+", help="--model: time steps (several give one table each)")
    p.add_argument("--img-size", type=int, help="--model: input size (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="--model: seed of weights and random input")
    p.add_argument("--all-ones", action="store_true", help="make every neuron fire at every step (upper bound)")
    p.add_argument("--json", help="write the report as JSON to this file")
    _common_args(p)


def _check_sample(images: int, batch_size: int) -> None:
    if images < 1:
        raise ValueError(f"--images must be a positive number of test images, got {images}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive number of images, got {batch_size}")


def sample_batches(
    name: str, root: str | None, opts: dict[str, Any], images: int, batch_size: int, T: int | None
) -> tuple[list[torch.Tensor], int]:
    """The first ``images`` test images of a dataset (all of them if it has fewer) in batches of ``batch_size``,
    time-first for event frames; and the dataset size."""
    from ..data import create_dataset, is_event_dataset

    _check_sample(images, batch_size)
    opts = dict(opts)
    if T is not None and is_event_dataset(name):
        opts.setdefault("T", T)
    ds = create_dataset(name, root, "test", **opts)
    first = torch.utils.data.Subset(ds, range(min(images, len(ds))))
    loader = torch.utils.data.DataLoader(first, batch_size=batch_size, shuffle=False)
    return [x.transpose(0, 1) if x.dim() == 5 else x for x, _ in loader], len(ds)


def batch_images(x: torch.Tensor) -> int:
    """Images in a batch: ``[B, C, H, W]`` or time-first event frames ``[T, B, C, H, W]``."""
    return len(x) if x.dim() == 4 else x.shape[1]


def checkpoint_data(run_dir: Path, model: nn.Module, data: str | None = None,
                    data_dir: str | None = None) -> tuple[str, str | None, dict[str, Any]]:
    """Dataset name, root and options of a run's test images (``data``/``data_dir`` override the run's), sized
    for its model."""
    cfg = run_config(run_dir)
    opts = dict(cfg.data.kwargs)
    size = getattr(model, "img_size", None) or cfg.data.img_size  # the images must fit the model
    if size:
        opts["img_size"] = size
    return data or cfg.data.name, data_dir or cfg.data.root, opts


def run_config(run_dir: Path) -> Any:
    """The run's :class:`TrainConfig` (defaults if the run has no ``config.yaml``)."""
    from ..train.config import TrainConfig, load_config

    path = run_dir / "config.yaml"
    return load_config(path) if path.exists() else TrainConfig()


def checkpoint_report(
    checkpoint: str | Path, which: str = "last", data: str | None = None, data_dir: str | None = None,
    images: int = DEFAULT_IMAGES, batch_size: int = DEFAULT_BATCH_SIZE, e_mac: float = E_MAC_PJ,
    e_ac: float = E_AC_PJ, device: str = "cpu", all_ones: bool = False,
) -> tuple[EnergyReport, nn.Module]:
    """Energy report of a trained run on its dataset's (or ``data``'s) first ``images`` test images; also the
    model. The one measurement behind ``spikformers energy``, ``compare`` and ``plot``."""
    from ..train.checkpoint import load_model, resolve_checkpoint
    from ..train.engine import resolve_device

    _check_sample(images, batch_size)
    run_dir, weights = resolve_checkpoint(checkpoint, which)
    model = load_model(run_dir, which=weights.stem).to(resolve_device(device))
    name, root, opts = checkpoint_data(run_dir, model, data, data_dir)
    xs, n = sample_batches(name, root, opts, images, batch_size, getattr(model, "T", None))
    dev = next(model.parameters()).device
    desc = f"{name} test split, first {sum(batch_images(x) for x in xs)} of {n} images"
    report = measure(model, [x.to(dev) for x in xs], e_mac, e_ac, input_desc=desc, all_ones=all_ones)
    return report, model


def model_report(
    name: str, T: int | None = None, attn: str | None = None, img_size: int | None = None, data: str | None = None,
    data_dir: str | None = None, images: int = DEFAULT_IMAGES, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
    e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ, device: str = "cpu", all_ones: bool = False,
) -> EnergyReport:
    """Energy report of a randomly initialised registry model on ``images`` images of uniform random noise (or
    ``data``'s first ``images`` test images)."""
    from ..data import dataset_info
    from ..registry import create_model
    from ..train.engine import resolve_device

    _check_sample(images, batch_size)
    torch.manual_seed(seed)
    overrides: dict[str, Any] = {}
    if T is not None:
        overrides["T"] = T
    if attn:
        overrides["attn"] = attn
    if data:
        info = dataset_info(data, data_dir, img_size=img_size)
        overrides.update(num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size)
    elif img_size:
        overrides["img_size"] = img_size
    dev = resolve_device(device)
    model = create_model(name, **overrides).to(dev)
    if data:
        opts = {"img_size": model.img_size} if getattr(model, "img_size", None) else {}
        xs, n = sample_batches(data, data_dir, opts, images, batch_size, model.T)
        desc = f"{data} test split, random weights"
    else:
        g = torch.Generator().manual_seed(seed)
        shape = (model.in_chans, model.img_size, model.img_size)
        xs = [torch.rand((min(batch_size, images - i), *shape), generator=g) for i in range(0, images, batch_size)]
        desc = "uniform random input, random weights"
    xs = [x.to(dev) for x in xs]
    calibrate_bn(model, xs)
    return measure(model, xs, e_mac, e_ac, input_desc=desc + ", BN statistics from the input", all_ones=all_ones)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Set a fresh model's batch-norm running statistics from the input (cumulative mean over the batches).

    With BN's initial statistics (mean 0, variance 1) an untrained model barely fires; after this its neurons
    see normalised input, as in a trained model.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for m, momentum in saved:
            m.momentum = momentum


@command("energy", "per-layer FLOPs, firing rates, SOPs and energy per image of a run or a model", _energy_args)
def _energy(args: argparse.Namespace) -> int:
    common = dict(images=args.images, batch_size=args.batch_size, e_mac=args.e_mac, e_ac=args.e_ac,
                  device=args.device, all_ones=args.all_ones)
    reports: list[EnergyReport] = []
    if args.checkpoint:
        from ..cli import existing_checkpoint

        existing_checkpoint(args.checkpoint)
        report, _ = checkpoint_report(args.checkpoint, args.which, args.data, args.data_dir, **common)
        reports.append(report)
    else:
        for T in args.T or [None]:
            reports.append(model_report(args.model, T, args.attn, args.img_size, args.data, args.data_dir,
                                        seed=args.seed, **common))
    for report in reports:
        print(report.table())
        print()
    if len(reports) > 1:
        unit = energy_unit(max(r.energy_mj for r in reports))[0]  # one unit down the column
        for r in reports:
            print(f"T={r.T:3d}  {format_energy(r.energy_mj, unit):>12s}  {r.total_sops / 1e6:.2f} M SOPs  "
                  f"{r.total_macs / 1e6:.2f} M MACs")
    if args.json:
        doc = reports[0].to_dict() if len(reports) == 1 else {"reports": [r.to_dict() for r in reports],
                                                               **reports[-1].to_dict()}
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    print(reports[-1].summary_line())
    return 0


# ---------------------------------------------------------------------------------------------------------
def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--which", default="last", choices=["last", "best"], help="weights of each run folder")
    p.add_argument("--json", help="write the comparison as JSON to this file")
    _common_args(p)


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Accuracy and size of a run: ``summary.json`` (test_acc, best_acc, params, architecture), else
    ``metrics.csv`` (last test_acc, best test_acc) and ``model.json``."""
    out: dict[str, Any] = {}
    if (run_dir / "summary.json").exists():
        out.update(json.loads((run_dir / "summary.json").read_text()))
    elif (run_dir / "metrics.csv").exists():
        with (run_dir / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        if rows:
            accs = [float(r["test_acc"]) for r in rows]
            out.update(test_acc=accs[-1], best_acc=max(accs), epochs=len(rows))
    if "architecture" not in out and (run_dir / "model.json").exists():
        out["architecture"] = json.loads((run_dir / "model.json").read_text()).get("architecture")
    return out


@command("compare", "accuracy, parameters, T, SOPs and energy of several runs side by side", _compare_args)
def _compare(args: argparse.Namespace) -> int:
    from ..registry import count_parameters

    rows = []
    for run in args.runs:
        run_dir = Path(run)
        summary = run_summary(run_dir)
        report, model = checkpoint_report(run_dir, args.which, args.data, args.data_dir, args.images,
                                          args.batch_size, args.e_mac, args.e_ac, args.device)
        cfg = getattr(model, "default_cfg", {}).get("config", {})
        attn = cfg.get("attn") or ("lidiff" if "spiliformer" in str(summary.get("architecture")) else "")
        rows.append(dict(
            run=str(run_dir), architecture=summary.get("architecture") or report.model, attn=attn,
            test_acc=summary.get("test_acc"), best_acc=summary.get("best_acc"),
            params=summary.get("params") or count_parameters(model), T=report.T,
            sops=report.total_sops, macs=report.total_macs, energy_mj=report.energy_mj,
        ))  # fmt: skip
    w = max(len(r["run"]) for r in rows)
    unit, size = energy_unit(max(r["energy_mj"] for r in rows))  # one unit down the column
    print(f"{'run':{w}s} {'architecture':26s} {'attn':8s} {'test %':>7s} {'best %':>7s} {'params':>9s} {'T':>3s} "
          f"{'SOPs (M)':>9s} {'MACs (M)':>9s} {'energy ' + unit:>10s}")

    def pct(v: Any) -> str:
        return f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'-':>7s}"

    for r in rows:
        print(f"{r['run']:{w}s} {str(r['architecture'])[:26]:26s} {str(r['attn'])[:8]:8s} {pct(r['test_acc'])} "
              f"{pct(r['best_acc'])} {r['params'] / 1e6:8.3f}M {r['T']:3d} {r['sops'] / 1e6:9.3f} "
              f"{r['macs'] / 1e6:9.3f} {r['energy_mj'] / size:10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    best = min(rows, key=lambda r: r["energy_mj"])
    print(f"lowest energy: {best['run']} {format_energy(best['energy_mj'])} per image, {best['sops'] / 1e6:.3f} M SOPs "
          f"(test {pct(best['test_acc']).strip()}%)")
    return 0
