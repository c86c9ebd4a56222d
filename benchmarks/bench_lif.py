"""Benchmark the fused LIF kernel (forward + backward) against a plain per-step autograd loop and SpikingJelly.

SpikingJelly 2.0's ``LIFNode(step_mode="m")`` runs with our LIF's defaults (tau 2, threshold 1, hard reset to 0,
detached reset, sigmoid surrogate with alpha 4), its state reset (``functional.reset_net``) before every call; the
speed-up against it is SJ's time over ours, as the ratio of medians and paired within each repetition.
All figures are ratios measured in the same run, with the variants interleaved repetition by repetition (in a
new random order each time) so that load from other processes, and the allocator state one variant leaves
the next, hit them alike. Also reports achieved memory bandwidth against a plain
tensor copy measured in the same run, and the bytes autograd keeps for backward (saved_tensors_hooks).

    python benchmarks/bench_lif.py [--T 4 16] [--repeats 15] [--shape 64 384 64] [--keep-freed-memory]
                                   [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch.autograd.graph import saved_tensors_hooks

from spikformers.kernels import choose_save, lif_multistep, select_impl
from spikformers.train.runtime import keep_freed_memory


def default_saved(x: torch.Tensor) -> str:
    """What ``saved="auto"`` means for ``x``'s implementation (recompute on the C++ path, else q24)."""
    return "recompute" if getattr(select_impl(x, "auto"), "RECOMPUTES", False) else "q24"


class _Spike(torch.autograd.Function):
    """Heaviside forward, sigmoid-derivative backward (saves its input, as every per-step implementation does)."""

    @staticmethod
    def forward(ctx, u, alpha):  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * u)
        return grad * ctx.alpha * sg * (1.0 - sg), None


def plain_loop(x: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0) -> torch.Tensor:
    """The plain per-step autograd LIF loop (decay_input, hard reset to 0, detached reset)."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = _Spike.apply(h - v_th, alpha)
        v = h * (1.0 - s.detach())
        out.append(s)
    return torch.stack(out)


def spikingjelly_node() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """SpikingJelly's ``LIFNode(step_mode="m")`` with the library's LIF defaults (those of
    :func:`~spikformers.kernels.lif_multistep`), or None when not importable. ``backend="torch"`` is passed where
    the constructor takes one (spikingjelly 2.0's does not: it runs torch ops on the CPU)."""
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
    except Exception:  # noqa: BLE001
        return None
    kwargs = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True, step_mode="m",
                  surrogate_function=surrogate.Sigmoid(alpha=4.0))
    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
        kwargs["backend"] = "torch"
    node = neuron.LIFNode(**kwargs)

    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(node)
        return node(x)

    return run


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, int]:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn(x)``: all, and those beyond x's."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    total = sum(seen.values())
    return total, total - seen.get(x.untyped_storage().data_ptr(), 0)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def bench_shape(T: int, repeats: int, device: str, rest: tuple[int, ...] = (64, 384, 64)) -> dict:
    """Time every variant at ``[T, *rest]`` (the issue's ``[T, 64, 384, 64]`` by default); returns medians in
    seconds, ratios, bandwidth, saved bytes."""
    shape = (T, *rest)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    g = torch.randn(shape, generator=gen).to(device)
    n = x.numel()
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "loop": plain_loop,
        "fused": lambda x: lif_multistep(x),
        "fused_q24": lambda x: lif_multistep(x, saved="q24"),
        "fused_q16": lambda x: lif_multistep(x, saved="q16"),
        "fused_exact": lambda x: lif_multistep(x, saved="exact"),
        "eager_fallback": lambda x: lif_multistep(x, backend="eager"),
    }
    sj = spikingjelly_node()
    if sj is not None:
        variants["spikingjelly"] = sj

    def fwd_bwd(fn):
        def step():
            out = fn(x)
            torch.autograd.grad(out, x, g)
            _sync(x)
        return step

    def fwd_only(fn):
        def step():
            with torch.no_grad():
                fn(x)
            _sync(x)
        return step

    dst = torch.empty_like(x)

    def copy():  # into a buffer allocated once: the memory system's speed, without page faults
        dst.copy_(x.detach())
        _sync(x)

    jobs = {f"{k}": fwd_bwd(f) for k, f in variants.items()}
    jobs["fused_inference"] = fwd_only(variants["fused"])
    jobs["loop_inference"] = fwd_only(variants["loop"])
    jobs["copy"] = copy
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for job in jobs.values():  # warm-up (also builds the C++ library)
        job()
    order = random.Random(0)
    for _ in range(repeats):  # a new random order each repetition: no variant always follows the same one
        names = list(jobs)
        order.shuffle(names)
        for name in names:
            job = jobs[name]
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    both = {k: saved_bytes(f, x) for k, f in variants.items()}
    saved = {k: v[0] for k, v in both.items()}
    new_saved = {k: v[1] for k, v in both.items()}
    copy_bw = 2 * 4 * n / med["copy"]
    # bytes the default fused path must move per element: forward reads x and writes spikes (+ the saved state);
    # backward reads grad and the state (or x again, for "recompute") and writes grad_x
    state = {"recompute": 0, "q24": 3, "q16": 2, "exact": 4}[choose_save("lif", x.dtype, True, default_saved(x))]
    fused_bytes = (4 + 4 + state + 4 + (state or 4) + 4) * n
    return {
        "shape": list(shape),
        "impl": select_impl(x, "auto").__name__.rsplit(".", 1)[-1],
        "auto_saved": default_saved(x),
        "median_s": med,
        "min_s": best,
        "speedup_vs_loop": {k: med["loop"] / med[k] for k in variants},
        "speedup_vs_loop_of_min": {k: best["loop"] / best[k] for k in variants},
        # loop / fused within each repetition (run moments apart, so a slow spell of the machine moves both)
        "paired_speedups": [lo / fu for lo, fu in zip(times["loop"], times["fused"])],
        "speedup_vs_spikingjelly": ({k: med["spikingjelly"] / med[k] for k in variants} if sj else None),
        # SJ / fused within each repetition
        "paired_vs_spikingjelly": ([s / f for s, f in zip(times["spikingjelly"], times["fused"])] if sj else None),
        "inference_speedup": med["loop_inference"] / med["fused_inference"],
        "saved_bytes": saved,
        "saved_ratio_vs_loop": {k: saved[k] / saved["loop"] for k in variants},
        "saved_beyond_input_bytes": new_saved,
        "copy_GBps": copy_bw / 1e9,
        "fused_GBps": fused_bytes / med["fused"] / 1e9,
        "fused_bandwidth_vs_copy": (fused_bytes / med["fused"]) / copy_bw,
        "spikingjelly": "measured" if sj else "skipped: spikingjelly not importable",
    }


def print_table(res: dict) -> None:
    """Print one shape's results as a table."""
    print(f"\nLIF fwd+bwd at {res['shape']} (auto backend: {res['impl']}, saved={res['auto_saved']})")
    print(f"{'variant':<16}{'median ms':>11}{'x vs loop':>11}{'(of min)':>10}{'x vs SJ':>9}{'saved MB':>10}"
          f"{'saved/loop':>12}{'new MB':>8}")
    for k, t in res["median_s"].items():
        if k not in res["saved_bytes"]:
            continue
        sj = res["speedup_vs_spikingjelly"]
        print(f"{k:<16}{t * 1e3:>11.1f}{res['speedup_vs_loop'][k]:>11.2f}{res['speedup_vs_loop_of_min'][k]:>10.2f}"
              f"{(sj[k] if sj else float('nan')):>9.2f}{res['saved_bytes'][k] / 2**20:>10.1f}"
              f"{res['saved_ratio_vs_loop'][k]:>12.3f}{res['saved_beyond_input_bytes'][k] / 2**20:>8.1f}")
    paired = res["paired_speedups"]
    print(f"fused vs loop paired within each repetition: median {statistics.median(paired):.2f}x, "
          f"range {min(paired):.2f}-{max(paired):.2f}x over {len(paired)} repetitions")
    vs_sj = res["paired_vs_spikingjelly"]
    if vs_sj:
        print(f"fused vs SpikingJelly's LIFNode: {res['speedup_vs_spikingjelly']['fused']:.2f}x by medians, paired "
              f"within each repetition median {statistics.median(vs_sj):.2f}x, "
              f"range {min(vs_sj):.2f}-{max(vs_sj):.2f}x")
    print(f"inference (no grad): fused {res['median_s']['fused_inference'] * 1e3:.1f} ms, "
          f"loop {res['median_s']['loop_inference'] * 1e3:.1f} ms, {res['inference_speedup']:.2f}x")
    print(f"bandwidth: fused fwd+bwd {res['fused_GBps']:.1f} GB/s vs copy {res['copy_GBps']:.1f} GB/s "
          f"({res['fused_bandwidth_vs_copy']:.2f} of copy)")
    print("x vs loop: ratio of medians; (of min): ratio of the fastest repetitions, less moved by other processes and\n"
          "by the allocator state the previous variant left")
    print("saved MB counts every storage autograd keeps; new MB leaves out the input itself (saved=recompute keeps\n"
          "only the input, which costs memory only where nothing else holds it)")
    if res["speedup_vs_spikingjelly"] is None:
        print("SpikingJelly: " + res["spikingjelly"])


def build_info() -> dict:
    """How the C++ kernels of this process were built (``-march``, flags, threading), or why they were not."""
    from spikformers.kernels import cpp

    available = cpp.available()
    return {"available": available, "arch": cpp.target_arch(), "flags": cpp.build_flags,
            "threading": cpp.threading_model, "error": cpp.error}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print tables; optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=_positive, nargs="+", default=[4, 16])
    ap.add_argument("--repeats", type=_positive, default=15)
    ap.add_argument("--shape", type=_positive, nargs="+", default=[64, 384, 64], metavar="DIM",
                    help="the dimensions after T (default B=64 C=384 N=64, the issue's; smaller for a smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="CPU: spikformers.train.runtime.keep_freed_memory() first (malloc reuses blocks over 32 MB "
                         "instead of mapping them afresh: what `spikformers train` does), for every variant alike")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    report = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "keep_freed_memory": kept,
              "cpu": platform.processor() or platform.machine(), "results": []}
    if args.keep_freed_memory:
        print(f"malloc keeps freed blocks (keep_freed_memory): {'applied' if kept else 'not available here'}")
    for T in args.T:
        res = bench_shape(T, args.repeats, args.device, tuple(args.shape))
        report["results"].append(res)
        print_table(res)
    report["build"] = build_info()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
