"""Benchmark a full training step and an inference step of Spikformer-4-384 (CIFAR) with the fused neurons
against the same model with the reference per-step loop in every LIF, with the peak memory of each.

Ratios come from one run, variants interleaved repetition by repetition. Peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the bytes autograd saves for backward (saved_tensors_hooks,
distinct storages: the activation memory a training step holds at its peak) plus, as a cross-check, the growth
of the process's RSS during one training step (sampled every millisecond) in a fresh child process per variant.

    python benchmarks/bench_model.py [--batch 32] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time

import torch
from torch.autograd.graph import saved_tensors_hooks

import spikformers
from spikformers.neurons import LIF, TernaryNeuron

MODEL = "spikformer_4_384_cifar"


def build(backend: str, device: str) -> torch.nn.Module:
    """The model with every LIF / ternary neuron switched to ``backend``."""
    torch.manual_seed(0)
    model = spikformers.create_model(MODEL).to(device)
    for m in model.modules():
        if isinstance(m, (LIF, TernaryNeuron)):
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


def _rss_child(backend: str, batch: int, queue) -> None:
    torch.manual_seed(0)
    model = build(backend, "cpu")
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


def rss_growth(backend: str, batch: int) -> int:
    """RSS growth during a training step (after warm-up) in a fresh process (Linux); a coarse cross-check."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(backend, batch, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table; optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-rss", action="store_true", help="skip the child-process RSS cross-check (CPU)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    variants = {"fused": "auto", "reference": "reference"}
    models = {k: build(b, dev) for k, b in variants.items()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for k in variants:
        train_step(models[k], opts[k], x, y)
        infer_step(models[k], x)
    times: dict[str, list[float]] = {f"{k}_{s}": [] for k in variants for s in ("train", "infer")}
    peak: dict[str, int] = {}
    for _ in range(args.repeats):
        for k in variants:
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(dev)
            t0 = time.perf_counter()
            train_step(models[k], opts[k], x, y)
            _sync(dev)
            times[f"{k}_train"].append(time.perf_counter() - t0)
            if dev == "cuda":
                peak[f"{k}_train"] = torch.cuda.max_memory_allocated()
            t0 = time.perf_counter()
            infer_step(models[k], x)
            _sync(dev)
            times[f"{k}_infer"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    saved = {k: saved_bytes(models[k], x) for k in variants}
    report = {
        "model": MODEL, "T": models["fused"].T, "batch": args.batch, "device": dev,
        "threads": torch.get_num_threads(), "median_s": med,
        "train_speedup": med["reference_train"] / med["fused_train"],
        "infer_speedup": med["reference_infer"] / med["fused_infer"],
        "saved_for_backward_bytes": saved,
        "saved_ratio": saved["fused"] / saved["reference"],
    }
    if dev == "cuda":
        report["cuda_peak_bytes"] = peak
        report["cuda_peak_ratio"] = peak["fused_train"] / peak["reference_train"]
    elif not args.no_rss:
        rss = {k: rss_growth(b, args.batch) for k, b in variants.items()}
        report["rss_growth_bytes"] = rss
        report["rss_growth_ratio"] = rss["fused"] / max(rss["reference"], 1)
    mb = 2**20
    print(f"\n{MODEL}, T={report['T']}, batch {args.batch}, {dev}, {report['threads']} threads")
    print(f"{'step':<10}{'fused ms':>10}{'reference ms':>14}{'speed-up':>10}")
    for s in ("train", "infer"):
        print(f"{s:<10}{med['fused_' + s] * 1e3:>10.0f}{med['reference_' + s] * 1e3:>14.0f}"
              f"{med['reference_' + s] / med['fused_' + s]:>10.2f}")
    print(f"saved for backward: fused {saved['fused'] / mb:.0f} MB, reference {saved['reference'] / mb:.0f} MB, "
          f"ratio {report['saved_ratio']:.3f}")
    if "cuda_peak_ratio" in report:
        print(f"CUDA peak: fused {peak['fused_train'] / mb:.0f} MB, reference {peak['reference_train'] / mb:.0f} MB, "
              f"ratio {report['cuda_peak_ratio']:.3f}")
    if "rss_growth_ratio" in report:
        print(f"peak RSS growth per train step: fused {rss['fused'] / mb:.0f} MB, "
              f"reference {rss['reference'] / mb:.0f} MB, ratio {report['rss_growth_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
