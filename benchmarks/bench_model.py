"""Benchmark a training step and an inference step of Spikformer-4-384 (CIFAR) against SpikingJelly 2.0's
``spikformer_cifar10``, cell by cell: input kind x model state x batch, all in one process.

Contenders, interleaved repetition by repetition (in a new random order each repetition):

- ``sj``: SpikingJelly 2.0's Spikformer of the same shape (``spikformer_cifar10(T=4, num_classes=10)`` for the
  default model; for another ``spikformer_*_cifar`` name the ``Spikformer(...)`` of the same depth, width, heads,
  MLP ratio and T), its per-step logits averaged over T, ``functional.reset_net`` after every step;
- ``fused``: our model as it ships (no kernel switch changed);
- ``dense``: the same with ``kernel_config(event_driven=False)`` (dense products instead of event-driven ones);
- ``reference``: the library's plain path (per-step reference loop in every LIF, every kernel switch off).

A training step is forward, cross-entropy, backward and an AdamW step (the same for both libraries); an inference
step is an evaluation forward under ``no_grad``. Inputs (``--inputs``): uniform random images in [0, 1),
standard-normal images, and real normalised images (the bundled digits, upsampled to the model's size, the gray
channel repeated, normalised as the library's dataset does). Model states (``--states``): freshly initialised
(seeded), and after ``--train-steps`` (50) AdamW steps on the digits training split, each library's model trained
separately with the same recipe (seed, batches, learning rate). Every contender's weights and batch-norm statistics
are put back to the cell's state before each timed step, so the firing rates stay those of that state.

Per cell: medians of the repetitions, their range, the speed-up against SJ (SJ time / ours: above 1 we are faster)
as the ratio of medians and as the range of the ratios paired within each repetition, the same against our
reference, fused against dense (dense time / fused time: below 1 the event-driven path costs), and the firing
rates of our model's LIFs on that input. Then the peak RSS of one training step in fresh processes (``--rss-*``),
and with ``--memory`` the tensor-memory report (bytes saved for backward, training-step peaks with and without
checkpointing, chunked inference).

    python benchmarks/bench_model.py [--batch 8 32] [--repeats 5] [--inputs uniform normal digits]
                                     [--states fresh trained] [--state-dir DIR] [--json out.json]

``--model`` takes any 3x32x32 model name (``spikformer_1_64_cifar`` runs in seconds, as the test suite does);
the targets of ``bench_cpu.py`` are stated for the default.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import inspect
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

import spikformers
from spikformers.kernels import kernel_config
from spikformers.memory import chunked_forward, recompute_bn_neurons
from spikformers.neurons import LIF, TernaryNeuron
from spikformers.registry import model_config
from spikformers.train.runtime import keep_freed_memory

MODEL = "spikformer_4_384_cifar"  # the model the targets name; --model picks another
INPUTS = ("uniform", "normal", "digits")
STATES = ("fresh", "trained")
SJ = "sj"
TIMED = ("fused", "dense", "reference")  # ours, always timed; --extra adds others of VARIANTS

_OFF = {"compact_spikes": False, "event_driven": False, "fused_bn_neuron": False}
# variant -> (LIF backend, kernel switches changed from the defaults); "fused" is the library as it ships
VARIANTS: dict[str, tuple[str, dict[str, bool]]] = {
    "fused": ("auto", {}),
    "dense": ("auto", {"event_driven": False}),
    "reference": ("reference", dict(_OFF)),  # per-step loops, plain float-saving dense layers, separate modules
    "fused_split": ("auto", {"fused_bn_neuron": False}),  # each unit's norm and neuron separate
    "fused_lean": ("auto", {"fused_bn_neuron": False}),  # fused_split with recompute_bn_neurons
    "fused_plain_layers": ("auto", {"compact_spikes": False, "event_driven": False}),
    # every neuron one compare with a straight-through gradient: no neuron can make the step faster
    "neuron_floor": ("floor", {"event_driven": False, "fused_bn_neuron": False}),
}
# what sjs.spikformer_cifar10(T=4, num_classes=10) builds (tests/test_benchmarks.py checks it against the factory)
SJ_CIFAR10 = dict(T=4, in_channels=3, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10, embed_dims=384,
                  num_heads=12, mlp_ratio=4.0, depths=4)


def layers_as(variant: str) -> contextlib.AbstractContextManager:
    """Set the kernel switches of ``variant`` (see :data:`VARIANTS`) for the duration of the block."""
    return kernel_config(**VARIANTS[variant][1])


class _FloorSpike(torch.autograd.Function):
    """The cheapest possible neuron: one compare forward, gradient passed straight through (not a real LIF)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return (x >= 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g


def build(backend: str, device: str, name: str = MODEL, seed: int = 0) -> nn.Module:
    """Model ``name`` (seeded) with every LIF / ternary neuron switched to ``backend`` (``"floor"``:
    :class:`_FloorSpike`)."""
    torch.manual_seed(seed)
    model = spikformers.create_model(name).to(device)
    for m in model.modules():
        if isinstance(m, (LIF, TernaryNeuron)):
            if backend == "floor":
                m.forward = _FloorSpike.apply
            else:
                m.backend = backend
    return model


def sj_importable() -> str | None:
    """None when SpikingJelly's Spikformer imports, else why not."""
    try:
        from spikingjelly.activation_based import functional  # noqa: F401
        from spikingjelly.activation_based.model import spikformer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: skip SJ
        return f"spikingjelly not importable ({type(e).__name__}: {e})"
    return None


def sj_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments of SpikingJelly 2.0's ``Spikformer`` with the shape of our model ``name``."""
    cfg = model_config(name)
    patch = {"cifar": 4, "imagenet": 16}.get(cfg.get("sps"))
    if not name.startswith("spikformer_") or patch is None:
        raise ValueError("SpikingJelly's counterpart is built for spikformer_* models only (pass --no-sj)")
    return dict(T=cfg["T"], in_channels=cfg["in_chans"], img_size_h=cfg["img_size"], img_size_w=cfg["img_size"],
                patch_size=patch, num_classes=cfg["num_classes"], embed_dims=cfg["dim"], num_heads=cfg["heads"],
                mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), depths=cfg["depth"])


def sj_label(kwargs: dict[str, Any]) -> str:
    """How SJ's network is built, as a call."""
    if kwargs == SJ_CIFAR10:
        return "spikformer_cifar10(T=4, num_classes=10)"
    return "Spikformer(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def build_sj(kwargs: dict[str, Any], device: str, seed: int = 0) -> nn.Module:
    """SpikingJelly's Spikformer (seeded)."""
    from spikingjelly.activation_based.model import spikformer as sjs

    torch.manual_seed(seed)
    return sjs.Spikformer(**kwargs).to(device)


def _sj_reset(model: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               per_step: bool = False, reset: Callable[[nn.Module], None] | None = None) -> torch.Tensor:
    """One optimisation step: forward, cross-entropy, backward, AdamW update; returns the loss.

    ``per_step``: the model returns ``[T, B, K]`` logits (SJ), averaged over T; ``reset`` runs after the step."""
    model.train()
    out = model(x)
    logits = out if isinstance(out, torch.Tensor) else out[0]
    if per_step:
        logits = logits.mean(0)
    loss = torch.nn.functional.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if reset is not None:
        reset(model)
    return loss.detach()


@torch.no_grad()
def infer_step(model: nn.Module, x: torch.Tensor, reset: Callable[[nn.Module], None] | None = None) -> None:
    """One evaluation forward pass."""
    model.eval()
    model(x)
    if reset is not None:
        reset(model)


@dataclass
class Contender:
    """One timed model: ours under a variant's kernel switches, or SpikingJelly's network (``sj``)."""

    name: str
    model: nn.Module
    lr: float = 1e-4
    opt: torch.optim.Optimizer = field(init=False)
    state: dict[str, torch.Tensor] | None = None  # the cell's weights and statistics, put back before each step

    def __post_init__(self) -> None:
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr)

    @property
    def is_sj(self) -> bool:
        return self.name == SJ

    def switches(self) -> contextlib.AbstractContextManager:
        """Our variant's kernel switches (nothing for SJ)."""
        return contextlib.nullcontext() if self.is_sj else layers_as(self.name)

    def train(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.switches():
            return train_step(self.model, self.opt, x, y, self.is_sj, _sj_reset if self.is_sj else None)

    def infer(self, x: torch.Tensor) -> None:
        with self.switches():
            infer_step(self.model, x, _sj_reset if self.is_sj else None)

    def restore(self) -> None:
        """Put the cell's weights and batch-norm statistics back."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


def contender(name: str, device: str, model_name: str, sj: dict[str, Any] | None, seed: int = 0,
              lr: float = 1e-4) -> Contender:
    """A freshly built contender: ``sj`` or one of :data:`VARIANTS`."""
    if name == SJ:
        return Contender(SJ, build_sj(sj or {}, device, seed), lr)
    model = build(VARIANTS[name][0], device, model_name, seed)
    if name == "fused_lean":
        recompute_bn_neurons(model)
    return Contender(name, model, lr)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@lru_cache(maxsize=4)
def _digits(split: str, img_size: int, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    from spikformers.data.images import BundledImages

    ds = BundledImages("digits", split, img_size=img_size, in_chans=in_chans)
    return ds.tensors[0], ds.tensors[1]


def _indices(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` indices into ``n`` items: successive seeded permutations, so every item comes before repeats."""
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(count / n))]
    return torch.cat(perms)[:count]


def make_input(kind: str, batch: int, name: str, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Images and labels of one input kind (see :data:`INPUTS`) for model ``name``."""
    cfg = model_config(name)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    if kind == "digits":
        images, labels = _digits("test", cfg["img_size"], cfg["in_chans"])
        idx = _indices(len(images), batch, gen)
        x, y = images[idx], labels[idx] % cfg["num_classes"]
    else:
        x = torch.rand(shape, generator=gen) if kind == "uniform" else torch.randn(shape, generator=gen)
        y = torch.randint(0, cfg["num_classes"], (batch,), generator=gen)
    return x.to(device), y.to(device)


def train_on_digits(c: Contender, name: str, steps: int, batch: int, lr: float, seed: int, device: str) -> list[float]:
    """``steps`` AdamW steps (learning rate ``lr``) of ``c``'s model on the digits training split, batches in a
    seeded order (the same for every model given the same seed); returns the losses."""
    cfg = model_config(name)
    images, labels = _digits("train", cfg["img_size"], cfg["in_chans"])
    order = _indices(len(images), steps * batch, torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(c.model.parameters(), lr=lr)
    losses = []
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        x, y = images[idx].to(device), (labels[idx] % cfg["num_classes"]).to(device)
        loss = train_step(c.model, opt, x, y, c.is_sj, _sj_reset if c.is_sj else None)
        losses.append(float(loss))
    return losses


def trained_states(fresh: dict[str, dict[str, torch.Tensor]], args: argparse.Namespace) -> tuple[dict, dict]:
    """The weights of every side (``ours``, ``sj``) after training on digits from ``fresh``, and the training log.

    With ``--state-dir`` they are read from (or written to) a file named after the recipe, so that runs of
    several builds time the same trained weights."""
    recipe = dict(model=args.model, steps=args.train_steps, batch=args.train_batch, lr=args.train_lr, seed=args.seed)
    cache = None
    if args.state_dir:
        cache = Path(args.state_dir) / (f"trained_{args.model}_{args.train_steps}steps_b{args.train_batch}"
                                        f"_lr{args.train_lr:g}_seed{args.seed}.pt")
        if cache.exists():
            saved = torch.load(cache, map_location=args.device, weights_only=True)
            if set(fresh) <= set(saved["states"]):
                print(f"trained weights read from {cache}")
                return saved["states"], {**json.loads(saved["log"]), "cached": str(cache)}
    states, log = {}, {**recipe, "losses": {}, "seconds": {}}
    for side in fresh:
        c = contender(SJ if side == "sj" else "fused", args.device, args.model, args.sj, args.seed)
        c.model.load_state_dict(fresh[side])
        t0 = time.perf_counter()
        log["losses"][side] = train_on_digits(c, args.model, args.train_steps, args.train_batch, args.train_lr,
                                              args.seed, args.device)
        log["seconds"][side] = time.perf_counter() - t0
        states[side] = snapshot(c.model)
        first, last = log["losses"][side][0], log["losses"][side][-1]
        print(f"trained {side} {args.train_steps} steps on digits (batch {args.train_batch}, lr {args.train_lr:g}): "
              f"loss {first:.3f} -> {last:.3f} in {log['seconds'][side]:.0f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"states": states, "log": json.dumps(log)}, cache)
    return states, log


@torch.no_grad()
def firing_rates(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Fraction of non-zero outputs of every LIF in one training-mode forward (mean, min, max over the LIFs):
    which of the dense and event-driven paths wins depends on these."""
    rates: list[float] = []
    hooks = [m.register_forward_hook(lambda m, i, o: rates.append(o.float().ne(0).float().mean().item()))
             for m in model.modules() if isinstance(m, LIF)]
    model.train()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    if not rates:
        return {"mean": None, "min": None, "max": None, "neurons": 0}
    return {"mean": statistics.fmean(rates), "min": min(rates), "max": max(rates), "neurons": len(rates)}


def ratio_stats(num: list[float], den: list[float]) -> dict[str, Any]:
    """``median(num) / median(den)``, and the ratios paired within each repetition with their median and range."""
    paired = [n / d for n, d in zip(num, den)]
    return {"ratio": statistics.median(num) / statistics.median(den), "paired": paired,
            "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired)}


def measure_cell(contenders: list[Contender], x: torch.Tensor, y: torch.Tensor, repeats: int, device: str,
                 order: random.Random) -> dict[str, dict[str, list[float]]]:
    """Seconds of every contender's training and inference step, one warm-up then ``repeats`` repetitions, the
    contenders in a new random order each repetition, each step from the cell's weights."""
    times: dict[str, dict[str, list[float]]] = {c.name: {"train": [], "infer": []} for c in contenders}
    for c in contenders:  # warm-up: optimiser state, kernels, the allocator's blocks for this batch
        c.restore()
        c.train(x, y)
        c.infer(x)
    for _ in range(repeats):
        names = list(contenders)
        order.shuffle(names)
        for c in names:
            c.restore()
            _sync(device)
            t0 = time.perf_counter()
            c.train(x, y)
            _sync(device)
            t1 = time.perf_counter()
            c.infer(x)
            _sync(device)
            times[c.name]["train"].append(t1 - t0)
            times[c.name]["infer"].append(time.perf_counter() - t1)
    for c in contenders:
        c.restore()
    return times


def cell_report(times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians, ranges and ratios of one cell's times."""
    modes = ("train", "infer")
    ours = [k for k in times if k != SJ]
    rep: dict[str, Any] = {
        "times_s": times,
        "median_s": {k: {m: statistics.median(v[m]) for m in modes} for k, v in times.items()},
        "min_s": {k: {m: min(v[m]) for m in modes} for k, v in times.items()},
        "max_s": {k: {m: max(v[m]) for m in modes} for k, v in times.items()},
        "speedup_vs_sj": ({k: {m: ratio_stats(times[SJ][m], times[k][m]) for m in modes} for k in ours}
                          if SJ in times else None),
        "speedup_vs_reference": {k: {m: ratio_stats(times["reference"][m], times[k][m]) for m in modes}
                                 for k in ours},
        "fused_vs_dense": {m: ratio_stats(times["dense"][m], times["fused"][m]) for m in modes},
    }
    return rep


def _range(r: dict[str, Any]) -> str:
    return f"{r['paired_min']:.2f}-{r['paired_max']:.2f}"


def print_cell(cell: dict[str, Any]) -> None:
    """One cell's table: every contender's medians, speed-ups against SJ (first) and against the reference."""
    fr = cell["firing_rates"]
    rates = (f"mean {fr['mean']:.3f}, min {fr['min']:.3f}, max {fr['max']:.3f} over {fr['neurons']} LIFs"
             if fr["neurons"] else "no LIF modules seen")
    print(f"\n{cell['input']} images, {cell['state']} model, batch {cell['batch']} (firing rates: {rates})")
    print(f"{'':<20}{'train ms':>10}{'x SJ':>7}{'paired':>12}{'x ref':>7}{'infer ms':>10}{'x SJ':>7}{'paired':>12}"
          f"{'x ref':>7}")
    vs_sj, vs_ref, med = cell["speedup_vs_sj"], cell["speedup_vs_reference"], cell["median_s"]
    for k in med:
        row = f"{k:<20}"
        for m in ("train", "infer"):
            s = vs_sj[k][m] if vs_sj and k in vs_sj else None
            r = vs_ref.get(k, {}).get(m)
            row += (f"{med[k][m] * 1e3:>10.0f}" + (f"{s['ratio']:>7.2f}{_range(s):>12}" if s else f"{'':>19}")
                    + (f"{r['ratio']:>7.2f}" if r else f"{'':>7}"))
        print(row)
    fd = cell["fused_vs_dense"]
    print("fused vs dense (dense time / fused time): " + ", ".join(
        f"{m} {fd[m]['ratio']:.2f}x (paired {_range(fd[m])})" for m in ("train", "infer")))


def print_summary(report: dict[str, Any]) -> None:
    """Every cell in one table: the fused model against SJ and against the dense path."""
    print(f"\nsummary: {report['model']} against SpikingJelly {report['sj']['label']}, medians of "
          f"{report['repeats']} interleaved repetitions; x SJ = SJ time / ours (above 1: faster), paired = range "
          "of the ratios within each repetition; fused/dense = dense time / fused time")
    print(f"{'input':<9}{'state':<9}{'batch':>6}{'SJ ms':>9}{'fused ms':>10}{'dense ms':>10}{'fused x SJ':>12}"
          f"{'paired':>12}{'fused/dense':>13}{'paired':>12}{'infer x SJ':>12}{'paired':>12}")
    for cell in report["cells"]:
        med, vs = cell["median_s"], cell["speedup_vs_sj"]
        fd = cell["fused_vs_dense"]["train"]
        sj_ms = f"{med[SJ]['train'] * 1e3:>9.0f}" if SJ in med else f"{'-':>9}"
        tr = (f"{vs['fused']['train']['ratio']:>12.2f}{_range(vs['fused']['train']):>12}" if vs else f"{'-':>24}")
        inf = (f"{vs['fused']['infer']['ratio']:>12.2f}{_range(vs['fused']['infer']):>12}" if vs else f"{'-':>24}")
        print(f"{cell['input']:<9}{cell['state']:<9}{cell['batch']:>6}{sj_ms}{med['fused']['train'] * 1e3:>10.0f}"
              f"{med['dense']['train'] * 1e3:>10.0f}{tr}{fd['ratio']:>13.2f}{_range(fd):>12}{inf}")


# ---------------------------------------------------------------------------------------------------------
# peak RSS of a training step, in fresh processes


def _status_bytes(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


def rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build the contender, run one training step (optimiser state, kernels), hand freed
    memory back to the system, then measure the peak RSS of a second step above the RSS before it."""
    torch.set_num_threads(spec["threads"])
    c = contender(spec["variant"], "cpu", spec["model"], spec["sj"], spec["seed"])
    x, y = make_input(spec["input"], spec["batch"], spec["model"], spec["seed"])
    c.train(x, y)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_bytes("VmRSS")
    try:  # "5" resets the kernel's peak-RSS mark (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method = "sampled every ms"
    top, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            top[0] = max(top[0], _status_bytes("VmRSS"))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample) if method != "VmHWM" else None
    if sampler:
        sampler.start()
    c.train(x, y)
    done.set()
    if sampler:
        sampler.join()
    peak = _status_bytes("VmHWM") if method == "VmHWM" else max(top[0], _status_bytes("VmRSS"))
    return {"before_bytes": base, "peak_bytes": peak, "step_bytes": peak - base, "method": method}


def rss_in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`rss_child` in a new Python process (this script, ``--rss-child``) and return what it measured."""
    env = dict(os.environ)
    src = str(Path(spikformers.__file__).resolve().parents[1])  # the same library as this process's
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rss-child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the RSS measurement of {spec['variant']} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_report(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one training step per contender of ``--rss-variants``, each in a fresh process."""
    variants = [v for v in args.rss_variants if v != SJ or args.sj is not None]
    spec = dict(model=args.model, sj=args.sj, batch=args.rss_batch, input=args.inputs[0], seed=args.seed,
                threads=torch.get_num_threads())
    out = {k: rss_in_fresh_process({**spec, "variant": k}) for k in variants}
    rep: dict[str, Any] = {"batch": args.rss_batch, "input": args.inputs[0], "state": "fresh", "variants": out}
    if SJ in out:
        rep["ratio_vs_sj"] = {k: out[k]["step_bytes"] / max(out[SJ]["step_bytes"], 1) for k in out if k != SJ}
        rep["peak_ratio_vs_sj"] = {k: out[k]["peak_bytes"] / out[SJ]["peak_bytes"] for k in out if k != SJ}
    return rep


def print_rss(rep: dict[str, Any]) -> None:
    mb = 2**20
    print(f"\npeak RSS of one training step at batch {rep['batch']} ({rep['input']} images, fresh model, each in a "
          "fresh process, after one warm-up step): growth above the RSS before the step, and the process's peak")
    for k, v in rep["variants"].items():
        ratio = rep.get("ratio_vs_sj", {}).get(k)
        print(f"{k:<20}{v['step_bytes'] / mb:>8.0f} MB step{v['peak_bytes'] / mb:>8.0f} MB process"
              + (f"   {ratio:.3f}x SJ's step ({rep['peak_ratio_vs_sj'][k]:.3f}x its process peak)" if ratio else ""))


# ---------------------------------------------------------------------------------------------------------
# tensor memory (--memory)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for backward during one training forward."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def peak_bytes(fn: Callable[[], Any], device: str) -> int:
    """Peak tensor memory allocated during ``fn()`` above what was allocated before (CUDA or CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = top = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        top = max(top, cur)
    return top


def memory_report(args: argparse.Namespace) -> dict[str, Any]:
    """Saved-for-backward bytes, training-step tensor peaks (with and without checkpointing), chunked-inference
    peaks, on standard-normal images at the largest ``--batch``."""
    dev, batch = args.device, max(args.batch)
    x, y = make_input("normal", batch, args.model, args.seed, dev)
    cs = {k: contender(k, dev, args.model, None, args.seed) for k in ("fused", "fused_split", "reference",
                                                                     "fused_lean")}
    for c in cs.values():
        c.train(x, y)
    saved, peak = {}, {}
    for k, c in cs.items():
        with layers_as(k):
            saved[k] = saved_bytes(c.model, x)
        peak[k] = peak_bytes(lambda c=c: c.train(x, y), dev)
    with layers_as("fused_plain_layers"):
        saved["fused_plain_layers"] = saved_bytes(cs["fused"].model, x)
    fused = cs["fused"]
    fused.model.set_grad_checkpointing(True)
    try:
        fused.train(x, y)
        peak["fused_checkpointing"] = peak_bytes(lambda: fused.train(x, y), dev)
    finally:
        fused.model.set_grad_checkpointing(False)
    model = fused.model.eval()
    xt = x.unsqueeze(0).expand(args.infer_T, *x.shape)
    with torch.no_grad():
        full = model(xt)
    chunked = chunked_forward(model, xt, args.chunk)
    infer = {"full": peak_bytes(lambda: infer_step(model, xt), dev),
             "chunked": peak_bytes(lambda: chunked_forward(model, xt, args.chunk), dev)}
    return {
        "batch": batch, "saved_for_backward_bytes": saved, "train_peak_bytes": peak,
        "saved_ratio": saved["fused"] / saved["reference"],
        "saved_ratio_plain_layers": saved["fused_plain_layers"] / saved["reference"],
        "saved_ratio_split": saved["fused_split"] / saved["reference"],
        "saved_ratio_lean": saved["fused_lean"] / saved["reference"],
        "train_peak_ratio": peak["fused"] / peak["reference"],
        "train_peak_ratio_checkpointing": peak["fused_checkpointing"] / peak["reference"],
        "train_peak_ratio_split": peak["fused_split"] / peak["reference"],
        "train_peak_ratio_lean": peak["fused_lean"] / peak["reference"],
        "infer_T": args.infer_T, "chunk": args.chunk, "infer_peak_bytes": infer,
        "infer_chunked_ratio": infer["chunked"] / infer["full"],
        "chunked_logits_equal": bool(torch.equal(full, chunked)),
    }


def print_memory(rep: dict[str, Any]) -> None:
    mb = 2**20
    saved, peak, infer = rep["saved_for_backward_bytes"], rep["train_peak_bytes"], rep["infer_peak_bytes"]
    print(f"\ntensor memory at batch {rep['batch']} (standard-normal images), against the reference:")
    print(f"saved for backward: fused {saved['fused'] / mb:.0f} MB (plain layers {saved['fused_plain_layers'] / mb:.0f}"
          f" MB), reference {saved['reference'] / mb:.0f} MB, ratio {rep['saved_ratio']:.3f} "
          f"(plain layers {rep['saved_ratio_plain_layers']:.3f}, split {rep['saved_ratio_split']:.3f}, "
          f"lean {rep['saved_ratio_lean']:.3f})")
    print(f"training-step peak: fused {peak['fused'] / mb:.0f} MB, with checkpointing "
          f"{peak['fused_checkpointing'] / mb:.0f} MB, reference {peak['reference'] / mb:.0f} MB; ratios "
          f"{rep['train_peak_ratio']:.3f}, {rep['train_peak_ratio_checkpointing']:.3f} (split "
          f"{rep['train_peak_ratio_split']:.3f}, lean {rep['train_peak_ratio_lean']:.3f})")
    print(f"inference peak at T={rep['infer_T']}: whole T {infer['full'] / mb:.0f} MB, chunks of {rep['chunk']} "
          f"{infer['chunked'] / mb:.0f} MB, ratio {rep['infer_chunked_ratio']:.3f}, "
          f"logits identical: {rep['chunked_logits_equal']}")


# ---------------------------------------------------------------------------------------------------------


def build_info() -> dict[str, Any]:
    """How the C++ kernels of this process were built (``-march``, flags, threading), or why they were not."""
    from spikformers.kernels import cpp

    available = cpp.available()
    return {"available": available, "arch": cpp.target_arch(), "flags": cpp.build_flags,
            "threading": cpp.threading_model, "library": cpp.library_path.name if cpp.library_path else None,
            "error": cpp.error}


def sj_lif_note() -> str:
    """Which LIF implementation SJ's network runs (SpikingJelly 2.0's LIFNode has no backend argument)."""
    from spikingjelly.activation_based import neuron

    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
        return "LIFNode, backend as the factory sets it"
    return "LIFNode (spikingjelly 2.0 picks its implementation by device: torch ops on the CPU)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL, help="a 3x32x32 model name; the targets name the default")
    ap.add_argument("--batch", type=_positive, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=_positive, default=5)
    ap.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    ap.add_argument("--states", nargs="+", choices=STATES, default=list(STATES))
    ap.add_argument("--train-steps", type=_positive, default=50, help="steps on digits for the trained state")
    ap.add_argument("--train-batch", type=_positive, default=16)
    ap.add_argument("--train-lr", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the timed steps")
    ap.add_argument("--state-dir", default=None,
                    help="keep the trained weights here and reuse them (runs of several builds time the same ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", nargs="+", default=[], choices=[k for k in VARIANTS if k not in TIMED],
                    help="time these variants of ours too")
    ap.add_argument("--no-sj", action="store_true", help="leave SpikingJelly out")
    ap.add_argument("--rss-batch", type=_positive, default=32)
    ap.add_argument("--rss-variants", nargs="+", default=["fused", SJ], choices=[SJ, *VARIANTS],
                    help="contenders whose training-step peak RSS is measured in fresh processes (CPU)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS measurement")
    ap.add_argument("--memory", action="store_true",
                    help="also the tensor-memory report against the reference (saved bytes, peaks, chunked inference)")
    ap.add_argument("--infer-T", type=_positive, default=16, help="time steps of the chunked-inference comparison")
    ap.add_argument("--chunk", type=_positive, default=4, help="chunk length of chunked inference")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="CPU: spikformers.train.runtime.keep_freed_memory() before timing (malloc reuses blocks over "
                         "32 MB instead of mapping them afresh: what `spikformers train` does), for every contender "
                         "alike; the peak-RSS processes leave malloc as it is")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = model_config(args.model)
    except (ValueError, TypeError, KeyError) as e:
        ap.error(f"--model {args.model}: {e}")
    if (cfg.get("in_chans"), cfg.get("img_size")) != (3, 32):
        ap.error(f"--model {args.model}: takes {cfg.get('in_chans')}x{cfg.get('img_size')} inputs; this benchmark "
                 "feeds 3x32x32 images (a CIFAR-shaped model)")
    if not args.train_lr > 0 or not args.lr > 0:
        ap.error("--lr and --train-lr must be positive")
    args.sj, args.sj_status = None, "measured"
    if args.no_sj:
        args.sj_status = "skipped: --no-sj"
    elif (why := sj_importable()) is not None:
        args.sj_status = f"skipped: {why}"
    else:
        try:
            args.sj = sj_kwargs(args.model)
        except ValueError as e:
            ap.error(f"--model {args.model}: {e}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; optionally write JSON."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--rss-child"]:  # the fresh process of rss_in_fresh_process
        print(json.dumps(rss_child(json.loads(argv[1]))))
        return {}
    args = parse_args(argv)
    dev = args.device
    kept = keep_freed_memory() if args.keep_freed_memory and dev == "cpu" else False
    names = [SJ] * (args.sj is not None) + list(TIMED) + list(args.extra)
    contenders = [contender(k, dev, args.model, args.sj, args.seed, args.lr) for k in names]
    sides = {"ours": next(c for c in contenders if c.name == "fused")}
    if args.sj is not None:
        sides["sj"] = contenders[0]
    fresh = {side: snapshot(c.model) for side, c in sides.items()}
    states = {"fresh": fresh}
    report: dict[str, Any] = {
        "model": args.model, "T": sides["ours"].model.T, "device": dev, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "repeats": args.repeats, "batches": args.batch, "inputs": args.inputs,
        "states": args.states, "lr": args.lr, "seed": args.seed, "keep_freed_memory": kept,
        "params": {side: sum(p.numel() for p in c.model.parameters()) for side, c in sides.items()},
        "sj": {"status": args.sj_status, "config": args.sj, "label": sj_label(args.sj) if args.sj else None},
    }
    if args.sj is not None:
        import importlib.metadata

        report["sj"]["version"] = importlib.metadata.version("spikingjelly")
        report["sj"]["neuron"] = sj_lif_note()
    print(f"{args.model} (T={report['T']}, {report['params']['ours'] / 1e6:.2f} M parameters), {dev}, "
          f"{report['threads']} threads; SpikingJelly: "
          + (f"{report['sj']['label']} ({report['params']['sj'] / 1e6:.2f} M parameters)" if args.sj else
             args.sj_status))
    if args.keep_freed_memory:
        print(f"malloc keeps freed blocks (keep_freed_memory), for every contender: "
              f"{'applied' if kept else 'not available here'}")
    if "trained" in args.states:
        states["trained"], report["training"] = trained_states(fresh, args)
    order = random.Random(args.seed)
    report["cells"] = []
    for state in args.states:
        for c in contenders:
            c.state = states[state]["sj" if c.is_sj else "ours"]
        for kind in args.inputs:
            for batch in args.batch:
                x, y = make_input(kind, batch, args.model, args.seed, dev)
                times = measure_cell(contenders, x, y, args.repeats, dev, order)
                cell = {"input": kind, "state": state, "batch": batch, **cell_report(times)}
                with layers_as("fused"):
                    cell["firing_rates"] = firing_rates(sides["ours"].model, x)
                sides["ours"].restore()
                report["cells"].append(cell)
                print_cell(cell)
    report["build"] = build_info()
    print_summary(report)
    b = report["build"]
    print(f"C++ kernels: -march={b['arch']}, {b['threading']}, flags {' '.join(b['flags'] or [])}"
          if b["available"] else f"C++ kernels unavailable: {b['error']}")
    if dev == "cpu" and not args.no_rss:
        del contenders, sides
        gc.collect()
        report["rss"] = rss_report(args)
        print_rss(report["rss"])
    if args.memory:
        report["memory"] = memory_report(args)
        print_memory(report["memory"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
