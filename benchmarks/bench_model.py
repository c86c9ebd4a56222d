"""Benchmark a full training step and an inference step of Spikformer-4-384 (CIFAR) with the fused neurons
against the same model with the reference per-step loop in every LIF, with the peak memory of each.

Ratios come from one run, variants interleaved repetition by repetition. Memory:
- bytes autograd saves for backward (saved_tensors_hooks, distinct storages) for the fused model (compact spike
  inputs on, and off) and the reference model;
- peak tensor memory of one training step (forward, backward, AdamW; optimiser state built before): on CUDA
  ``torch.cuda.max_memory_allocated``, on CPU the allocator's allocations and frees recorded by
  ``torch.profiler`` (``profile_memory``), summed in time order: reference, fused, fused with per-block
  activation checkpointing (``set_grad_checkpointing``);
- peak of an evaluation forward at ``--infer-T`` steps, whole T against ``chunked_forward(chunk=--chunk)``,
  with a check that the logits are identical;
- optionally (``--rss``) the growth of the process's RSS during one training step in a fresh child process.

    python benchmarks/bench_model.py [--batch 32] [--repeats 5] [--infer-T 16] [--chunk 4] [--json out.json]

Speed-ups are given three ways: the ratio of the medians, of the fastest repetitions (``of min``), and the median
and range of the paired ratios (reference / fused within each repetition, which run seconds apart, so a slow
spell of the shared machine moves both). ``--model`` takes any CIFAR-shaped name (e.g. ``spikformer_1_64_cifar``,
how the test suite runs this script in seconds); the targets are stated for the default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import threading
import time

import torch
from torch.autograd.graph import saved_tensors_hooks

import spikformers
from spikformers.kernels import kernel_config, set_kernel_config
from spikformers.kernels.spike_ops import SPARSE_CONV_MAX_RATE, SPARSE_MAX_RATE
from spikformers.memory import chunked_forward, recompute_bn_neurons
from spikformers.neurons import LIF, TernaryNeuron
from spikformers.registry import model_config

MODEL = "spikformer_4_384_cifar"  # the model the targets name; --model picks another


# (compact saved spike inputs, event-driven linears and convs, batch norm fused with the LIF) per variant; the
# reference is the library before this work: per-step loops, plain (float-saving, dense) layers, separate modules
LAYERS = {"fused": (True, True, True), "fused_split": (True, True, False), "fused_dense": (True, False, True),
          "fused_plain_layers": (False, False, True), "reference": (False, False, False),
          "neuron_floor": (True, False, False), "fused_lean": (True, True, False)}


def layer_switches(variant: str) -> dict[str, bool]:
    """The kernel switches of ``variant`` (see :data:`LAYERS`), as ``kernel_config`` takes them."""
    compact, sparse, units = LAYERS[variant]
    return {"compact_spikes": compact, "event_driven": sparse, "fused_bn_neuron": units}


def layers_as(variant: str) -> contextlib.AbstractContextManager:
    """Set the layer options of ``variant`` (see :data:`LAYERS`) for the duration of the block."""
    return kernel_config(**layer_switches(variant))


class _FloorSpike(torch.autograd.Function):
    """The cheapest possible neuron: one compare forward, gradient passed straight through (not a real LIF)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return (x >= 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g


def build(backend: str, device: str, name: str = MODEL) -> torch.nn.Module:
    """Model ``name`` with every LIF / ternary neuron switched to ``backend`` (``"floor"``: :class:`_FloorSpike`)."""
    torch.manual_seed(0)
    model = spikformers.create_model(name).to(device)
    for m in model.modules():
        if isinstance(m, (LIF, TernaryNeuron)):
            if backend == "floor":
                m.forward = _FloorSpike.apply
            else:
                m.backend = backend
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, x, y) -> None:
    """One optimisation step: forward, cross-entropy, backward, AdamW update."""
    model.train()
    out = model(x)
    logits = out if isinstance(out, torch.Tensor) else out[0]
    loss = torch.nn.functional.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@torch.no_grad()
def infer_step(model, x) -> None:
    """One evaluation forward pass."""
    model.eval()
    model(x)


@torch.no_grad()
def firing_rates(model, x) -> dict:
    """Mean, min and max firing rate over the LIF neurons in one training-mode forward (event-driven layers pay
    off below ``SPARSE_MAX_RATE``, so the figures above hold for rates like these)."""
    rates: list[float] = []
    hooks = [m.register_forward_hook(lambda m, i, o: rates.append(o.float().mean().item()))
             for m in model.modules() if isinstance(m, LIF)]
    model.train()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return {"mean": statistics.fmean(rates), "min": min(rates), "max": max(rates), "neurons": len(rates),
            "sparse_max_rate": SPARSE_MAX_RATE, "sparse_conv_max_rate": SPARSE_CONV_MAX_RATE}


def saved_bytes(model, x) -> int:
    """Bytes of distinct storages autograd keeps for backward during one training forward."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def peak_bytes(fn, device: str) -> int:
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


def memory_report(models: dict, opts: dict, x, y, device: str, infer_T: int, chunk: int) -> dict:
    """Saved-for-backward bytes, training-step peaks (with and without checkpointing), chunked-inference peaks."""
    saved, peak = {}, {}
    for k in ("fused", "fused_split", "reference", "fused_lean"):
        with layers_as(k):
            saved[k] = saved_bytes(models[k], x)
            peak[k] = peak_bytes(lambda k=k: train_step(models[k], opts[k], x, y), device)
    with layers_as("fused_plain_layers"):
        saved["fused_plain_layers"] = saved_bytes(models["fused"], x)
    models["fused"].set_grad_checkpointing(True)
    try:
        train_step(models["fused"], opts["fused"], x, y)
        peak["fused_checkpointing"] = peak_bytes(lambda: train_step(models["fused"], opts["fused"], x, y), device)
    finally:
        models["fused"].set_grad_checkpointing(False)
    model = models["fused"].eval()
    xt = x.unsqueeze(0).expand(infer_T, *x.shape)
    with torch.no_grad():
        full = model(xt)
    chunked = chunked_forward(model, xt, chunk)
    infer = {
        "full": peak_bytes(lambda: infer_step(model, xt), device),
        "chunked": peak_bytes(lambda: chunked_forward(model, xt, chunk), device),
    }
    return {
        "saved_for_backward_bytes": saved,
        "saved_ratio": saved["fused"] / saved["reference"],
        "saved_ratio_plain_layers": saved["fused_plain_layers"] / saved["reference"],
        "train_peak_bytes": peak,
        "train_peak_ratio": peak["fused"] / peak["reference"],
        "train_peak_ratio_checkpointing": peak["fused_checkpointing"] / peak["reference"],
        "saved_ratio_split": saved["fused_split"] / saved["reference"],
        "train_peak_ratio_split": peak["fused_split"] / peak["reference"],
        "saved_ratio_lean": saved["fused_lean"] / saved["reference"],
        "train_peak_ratio_lean": peak["fused_lean"] / peak["reference"],
        "infer_T": infer_T, "chunk": chunk, "infer_peak_bytes": infer,
        "infer_chunked_ratio": infer["chunked"] / infer["full"],
        "chunked_logits_equal": bool(torch.equal(full, chunked)),
    }


def _rss_child(variant: str, backend: str, batch: int, name: str, queue) -> None:
    set_kernel_config(**layer_switches(variant))
    torch.manual_seed(0)
    model = build(backend, "cpu", name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    train_step(model, opt, x, y)  # warm-up: builds optimiser state and kernels
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    before, top, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            top[0] = max(top[0], rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    train_step(model, opt, x, y)
    done.set()
    sampler.join()
    queue.put(max(top[0], rss()) - before)


def rss_growth(variant: str, backend: str, batch: int, name: str = MODEL) -> int:
    """RSS growth during a training step (after warm-up) in a fresh process (Linux); a coarse cross-check."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(variant, backend, batch, name, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table; optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=MODEL, help="a CIFAR-shaped (3x32x32) model name; the targets name the default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rss", action="store_true", help="also run the child-process RSS cross-check (CPU)")
    ap.add_argument("--plain-layers", action="store_true",
                    help="also time the fused model with plain layers (compact spike saving off)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the neuron-floor model (every neuron a single compare) that bounds any neuron speed-up")
    ap.add_argument("--infer-T", type=int, default=16, help="time steps of the chunked-inference comparison")
    ap.add_argument("--chunk", type=int, default=4, help="chunk length of chunked inference")
    ap.add_argument("--variants", nargs="+", choices=[k for k in LAYERS if k != "reference"], default=None,
                    help="time only these against the reference (fewer models resident, so less memory churn "
                         "between variants); the memory report needs fused_split and fused_lean")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = model_config(args.model)
    except (ValueError, TypeError, KeyError) as e:
        ap.error(f"--model {args.model}: {e}")
    if (cfg.get("in_chans"), cfg.get("img_size")) != (3, 32):
        ap.error(f"--model {args.model}: takes {cfg.get('in_chans')}x{cfg.get('img_size')} inputs; this benchmark "
                 "feeds 3x32x32 images (a CIFAR-shaped model)")
    dev = args.device
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    variants = {"fused": "auto", "fused_split": "auto", "reference": "reference", "fused_dense": "auto",
                "fused_lean": "auto"}
    if args.plain_layers:
        variants["fused_plain_layers"] = "auto"
    if not args.no_floor:
        variants["neuron_floor"] = "floor"
    if args.variants:
        variants = {k: ("floor" if k == "neuron_floor" else "auto") for k in ["fused", *args.variants]}
        variants["reference"] = "reference"
    models = {k: build(b, dev, args.model) for k, b in variants.items()}
    if "fused_lean" in models:
        recompute_bn_neurons(models["fused_lean"])
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for k in variants:
        with layers_as(k):
            train_step(models[k], opts[k], x, y)
            infer_step(models[k], x)
    times: dict[str, list[float]] = {f"{k}_{s}": [] for k in variants for s in ("train", "infer")}
    for _ in range(args.repeats):
        for k in variants:
            with layers_as(k):
                _sync(dev)
                t0 = time.perf_counter()
                train_step(models[k], opts[k], x, y)
                _sync(dev)
                times[f"{k}_train"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                infer_step(models[k], x)
                _sync(dev)
                times[f"{k}_infer"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    report = {
        "model": args.model, "T": models["fused"].T, "batch": args.batch, "device": dev,
        "threads": torch.get_num_threads(), "median_s": med, "min_s": low,
        "train_speedup": med["reference_train"] / med["fused_train"],
        "infer_speedup": med["reference_infer"] / med["fused_infer"],
        # the fastest repetitions: less moved by other processes on a shared machine than the medians
        "train_speedup_of_min": low["reference_train"] / low["fused_train"],
        "infer_speedup_of_min": low["reference_infer"] / low["fused_infer"],
    }
    # paired: reference / fused within each repetition (the two ran seconds apart)
    paired = {s: [r / f for r, f in zip(times[f"reference_{s}"], times[f"fused_{s}"])] for s in ("train", "infer")}
    report["paired_speedups"] = paired
    report["train_speedup_paired_median"] = statistics.median(paired["train"])
    with_memory = "fused_lean" in models and "fused_split" in models
    if with_memory:
        report.update(memory_report(models, opts, x, y, dev, args.infer_T, args.chunk))
    if dev == "cpu" and args.rss:
        rss = {k: rss_growth(k, b, args.batch, args.model) for k, b in variants.items()}
        report["rss_growth_bytes"] = rss
        report["rss_growth_ratio"] = rss["fused"] / max(rss["reference"], 1)
    mb = 2**20
    print(f"\n{args.model}, T={report['T']}, batch {args.batch}, {dev}, {report['threads']} threads")
    report["speedup"] = {k: {s: med[f"reference_{s}"] / med[f"{k}_{s}"] for s in ("train", "infer")} for k in variants}
    of_min = {k: {s: low[f"reference_{s}"] / low[f"{k}_{s}"] for s in ("train", "infer")} for k in variants}
    report["speedup_of_min"] = of_min
    print(f"{'variant':<20}{'train ms':>10}{'speed-up':>10}{'(of min)':>10}{'infer ms':>10}{'speed-up':>10}"
          f"{'(of min)':>10}")
    for k in variants:
        print(f"{k:<20}{med[k + '_train'] * 1e3:>10.0f}{report['speedup'][k]['train']:>10.2f}"
              f"{of_min[k]['train']:>10.2f}{med[k + '_infer'] * 1e3:>10.0f}{report['speedup'][k]['infer']:>10.2f}"
              f"{of_min[k]['infer']:>10.2f}")
    print("speed-up: ratio of the medians of interleaved repetitions; (of min): ratio of the fastest repetitions")
    for s in ("train", "infer"):
        p = paired[s]
        print(f"fused {s} speed-up paired within each repetition: median {statistics.median(p):.2f}x, "
              f"range {min(p):.2f}-{max(p):.2f}x over {len(p)} repetitions")
    print("fused: batch norm + LIF fused per unit, fused neurons, compact saved spikes, event-driven linears and "
          "convs; fused_split: the same with each norm and neuron separate; fused_dense: fused with dense layers; "
          "fused_lean: fused_split with norm + neuron recomputed in backward (recompute_bn_neurons)")
    with layers_as("fused"):
        report["firing_rates"] = fr = firing_rates(models["fused"], x)
    print(f"firing rates of the {fr['neurons']} LIF layers (this untrained model, this input): mean {fr['mean']:.3f}, "
          f"min {fr['min']:.3f}, max {fr['max']:.3f}; layers run event-driven up to {SPARSE_MAX_RATE} (linears), "
          f"{SPARSE_CONV_MAX_RATE} (3x3 convs) non-zero")
    if "neuron_floor" in variants:
        report["neuron_floor_speedup"] = report["speedup"]["neuron_floor"]
        print(f"neuron floor (every neuron one compare, layers as fused_dense): train "
              f"{med['neuron_floor_train'] * 1e3:.0f} ms, infer {med['neuron_floor_infer'] * 1e3:.0f} ms; no neuron "
              f"can make the step faster than reference/floor = {report['neuron_floor_speedup']['train']:.2f}x "
              f"(train), {report['neuron_floor_speedup']['infer']:.2f}x (infer)")
    if "fused_plain_layers" in variants:
        report["compact_layers_time_ratio"] = {
            s: med[f"fused_{s}"] / med[f"fused_plain_layers_{s}"] for s in ("train", "infer")}
        print("fused with compact layers / fused with plain layers, time: "
              + ", ".join(f"{s} {r:.3f}" for s, r in report["compact_layers_time_ratio"].items()))
    if not with_memory:
        return _finish(report, args.json)
    saved, peak, infer = report["saved_for_backward_bytes"], report["train_peak_bytes"], report["infer_peak_bytes"]
    print(f"saved for backward: fused {saved['fused'] / mb:.0f} MB (plain layers {saved['fused_plain_layers'] / mb:.0f}"
          f" MB), reference {saved['reference'] / mb:.0f} MB, ratio {report['saved_ratio']:.3f} "
          f"(plain layers {report['saved_ratio_plain_layers']:.3f})")
    print(f"training-step peak: fused {peak['fused'] / mb:.0f} MB, with checkpointing "
          f"{peak['fused_checkpointing'] / mb:.0f} MB, reference {peak['reference'] / mb:.0f} MB; ratios "
          f"{report['train_peak_ratio']:.3f}, {report['train_peak_ratio_checkpointing']:.3f}")
    print(f"fused_split (norm and neuron separate): saved for backward {saved['fused_split'] / mb:.0f} MB "
          f"({report['saved_ratio_split']:.3f}), training-step peak {peak['fused_split'] / mb:.0f} MB "
          f"({report['train_peak_ratio_split']:.3f})")
    print(f"fused_lean (recompute_bn_neurons): saved for backward {saved['fused_lean'] / mb:.0f} MB "
          f"({report['saved_ratio_lean']:.3f}), training-step peak {peak['fused_lean'] / mb:.0f} MB "
          f"({report['train_peak_ratio_lean']:.3f})")
    print(f"inference peak at T={args.infer_T}: whole T {infer['full'] / mb:.0f} MB, chunks of {args.chunk} "
          f"{infer['chunked'] / mb:.0f} MB, ratio {report['infer_chunked_ratio']:.3f}, "
          f"logits identical: {report['chunked_logits_equal']}")
    if "rss_growth_ratio" in report:
        rss = report["rss_growth_bytes"]
        print(f"peak RSS growth per train step: fused {rss['fused'] / mb:.0f} MB, "
              f"reference {rss['reference'] / mb:.0f} MB, ratio {report['rss_growth_ratio']:.3f}")
    return _finish(report, args.json)


def _finish(report: dict, path: str | None) -> dict:
    """Write the report as JSON when asked; return it."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
