"""The ``spikformers`` command: ``models``, ``train``, ``eval`` (and the commands other modules add).

Every subcommand prints its key result on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

# name -> (help, add_arguments, run); modules add their own with :func:`command`
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):  # noqa: A002
    """Decorator registering ``run(args) -> exit code`` as ``spikformers NAME``."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return wrap


# ---------------------------------------------------------------------------------------------------------
def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'spikformer_*_cifar'")
    p.add_argument("--no-count", action="store_true", help="skip building models to count parameters")


@command("models", "list the published model names with their parameter counts", _models_args)
def _models(args: argparse.Namespace) -> int:
    from .registry import count_parameters, create_model, list_models, model_config, parse_name

    names = list_models(args.pattern)
    if not names:
        from .registry import _FAMILIES

        raise ValueError(f"no published model matches {args.pattern!r}; families are {sorted(_FAMILIES)} "
                         "(`spikformers models` lists them all)")
    print(f"{'model':32s} {'params (M)':>11s} {'T':>3s} {'input':>10s} {'classes':>7s}  attention")
    for name in names:
        cfg = model_config(name)
        params = "" if args.no_count else f"{count_parameters(create_model(name)) / 1e6:.3f}"
        size = f"{cfg.get('in_chans', '?')}x{cfg.get('img_size', '?')}"
        print(f"{name:32s} {params:>11s} {cfg.get('T', ''):>3} {size:>10s} {cfg.get('num_classes', ''):>7}  "
              f"{cfg.get('attn') or parse_name(name)[0].attention}")
    print(f"{len(names)} models")
    return 0


# ---------------------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe (see configs/); flags below override it")
    p.add_argument("--model", help="registry name (default: spikformer_2_64_cifar sized for the dataset)")
    p.add_argument("--attn", help="attention mechanism to plug into the model (ssa, psa, a2os2a, ...)")
    p.add_argument("--dataset", help="dataset name (default: digits, bundled)")
    p.add_argument("--data-dir", help="dataset root folder")
    p.add_argument("--img-size", type=int, help="input image size")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--epochs", type=int, help="training epochs, before any cool-down (optim.epochs)")
    p.add_argument("--batch-size", type=int, help="training batch size per process (data.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW (optim.lr)")
    p.add_argument("--T", type=int, help="time steps")
    p.add_argument("--seed", type=int, help="random seed of weights, data order and augmentation")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--out", help="run folder (default runs/<time>); one that holds a run is refused unless "
                                 "--resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out even if it holds a run: the old run is moved to "
                        "OUT.old-<YYYYmmdd-HHMMSS>, never deleted")
    p.add_argument("--device", help="auto (CUDA if present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"],
                   help="mixed precision; fp16 runs on CUDA only, and as float32 (none) on a CPU")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the run folder RUN where it stopped (its config.yaml unless --config is given)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from the weights of a run folder or any checkpoint `spikformers convert` "
                        "reads (a head of another class count stays fresh); optimiser and schedule start anew")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optim.weight_decay=0.05 (repeatable)")


_FLAG_KEYS = {
    "model": "model.name", "attn": "model.attn", "dataset": "data.name", "data_dir": "data.root",
    "img_size": "data.img_size", "epochs": "optim.epochs", "batch_size": "data.batch_size", "lr": "optim.lr",
    "T": "model.T", "seed": "seed", "workers": "data.workers", "out": "out", "device": "device", "amp": "train.amp",
    "init": "init",
}


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` that a ``train`` command line describes."""
    from .train.config import load_config

    overrides = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in _FLAG_KEYS.items()
                 if getattr(args, flag, None) is not None]
    if args.download:
        overrides.append("data.download=true")
    if args.no_progress:
        overrides.append("progress=false")
    path = args.config
    if getattr(args, "resume", None):
        from pathlib import Path

        from .train.config import ConfigError

        run = Path(args.resume)
        if args.out is not None and Path(args.out) != run:
            raise ConfigError(f"--out {args.out} and --resume {run} name different folders; a resumed run goes on "
                              "writing into its own folder (leave out --out)")
        if getattr(args, "overwrite", False):
            raise ConfigError(f"--overwrite and --resume {run} contradict each other: --resume continues that run, "
                              "--overwrite starts a new one (moving the old one aside)")
        if not run.is_dir():
            raise ConfigError(f"--resume {run}: no such run folder")
        if not (run / "state.safetensors").is_file():
            raise ConfigError(f"--resume {run}: no state.safetensors there (not a run folder, or no epoch finished)")
        path = path or run / "config.yaml"
        overrides += [f"resume={json.dumps(str(run))}", f"out={json.dumps(str(run))}"]
    return load_config(path, overrides + list(args.set))


@command("train", "train a model (default: a small Spikformer on the bundled digits)", _train_args)
def _train(args: argparse.Namespace) -> int:
    import os

    from .train.checkpoint import atomic_write
    from .train.engine import train
    from .train.run_folder import RunProgress, interruption_report

    cfg = config_from_args(args)
    progress = RunProgress()
    try:
        result = train(cfg, overwrite=args.overwrite, progress=progress)
    except KeyboardInterrupt:  # Ctrl-C: say where it stopped and how to go on; the last saved state is whole
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
            distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
            print(file=sys.stderr)  # off the progress bar's line
            for line in interruption_report(progress, distributed):
                print(f"spikformers train: {line}", file=sys.stderr)
        return 130
    if result.rank != 0:  # under torchrun only rank 0 reports and writes
        return 0
    summary = {"architecture": None, "test_acc": result.last_acc, "best_acc": result.best_acc,
               "epochs": result.epochs, "seconds": round(result.seconds, 1), "params": result.params,
               "dataset": cfg.data.name, "processes": result.world_size}
    model_doc = json.loads((result.out_dir / "model.json").read_text())
    summary["architecture"] = model_doc["architecture"]
    text = json.dumps(summary, indent=2)
    atomic_write(result.out_dir / "summary.json", lambda tmp: tmp.write_text(text))
    print(f"run folder {result.out_dir}  ({result.seconds:.0f} s, best {result.best_acc:.2f}%)")
    print(f"held-out accuracy: {result.last_acc:.2f}% ({cfg.data.name} test split, last epoch)")
    return 0


# ---------------------------------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    p.add_argument("--which", default="last", choices=["last", "best"], help="which weights of a run folder")
    p.add_argument("--dataset", help="dataset (default: the run's)")
    p.add_argument("--data-dir", help="dataset root (default: the run's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else cpu; default), cpu, cuda, cuda:N")
    p.add_argument("--chunk", type=int, default=None, metavar="STEPS",
                   help="run the T steps this many at a time: the same accuracy, the memory of a STEPS-step "
                        "forward (Spikformer / HST backbones; see spikformers.memory.chunked_forward)")


@command("eval", "evaluate a checkpoint on its dataset's test split", _eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .train.checkpoint import load_model, resolve_checkpoint
    from .train.config import TrainConfig, load_config
    from .train.engine import build_loaders, evaluate, resolve_device

    device = resolve_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    run_dir, weights = resolve_checkpoint(existing_checkpoint(args.checkpoint), args.which)
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else TrainConfig()
    if args.dataset:
        cfg.data.name = args.dataset
    if args.data_dir:
        cfg.data.root = args.data_dir
    if args.batch_size:
        cfg.data.batch_size = args.batch_size
    model = load_model(weights.parent if weights.parent == run_dir else run_dir, which=weights.stem).to(device)
    if args.chunk is not None:
        from .memory import check_chunkable

        if args.chunk < 1:
            raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
        try:
            check_chunkable(model.eval())
        except NotImplementedError as e:
            raise ValueError(f"--chunk {args.chunk}: {e}") from None
    _, test_loader = build_loaders(cfg, getattr(model, "T", None))
    acc, loss = evaluate(model, test_loader, device, cfg.train.amp, args.chunk)
    chunked = f", T in chunks of {args.chunk}" if args.chunk else ""
    print(f"{model.default_cfg['architecture']} from {weights}: loss {loss:.4f}{chunked}")
    print(f"held-out accuracy: {acc:.2f}% ({cfg.data.name} test split, {len(test_loader.dataset)} images)")
    return 0


def existing_checkpoint(path: str) -> str:
    """``path`` if it names an existing run folder or file, else a :class:`CheckpointError` saying which."""
    from pathlib import Path

    from .train.checkpoint import CheckpointError

    if not Path(path).exists():
        what = "weights file" if path.endswith(".safetensors") else "run folder"
        raise CheckpointError(f"--checkpoint {path}: no such {what}")
    return path


# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from . import __version__

    _load_plugins()
    parser = argparse.ArgumentParser(prog="spikformers", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spikformers {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def _load_plugins() -> None:
    """Import the modules that add commands (energy, plots, comparisons) if they are present."""
    import importlib

    for mod in ("spikformers.energy.cli", "spikformers.viz", "spikformers.data.check", "spikformers.doctor",
                "spikformers.convert.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spikformers`` command."""
    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError
    from .train.engine import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, CheckpointError, TrainingError, OSError, ValueError, TypeError) as e:
        # one line per error; lines that start with spaces go on the one before (hints, listed keys)
        for line in str(e).splitlines() or [type(e).__name__]:
            print(line if line.startswith("  ") else f"spikformers {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspikformers {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


