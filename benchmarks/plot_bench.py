"""Draw the JSON of ``bench_lif.py`` and ``bench_model.py`` as one PNG, with the issue's targets as lines.

Three panels: the LIF kernel's forward + backward speed-up over the per-step loop, per variant and T (target 6x
at T = 4); the bytes each LIF variant keeps for backward per element and step, split into the reference to its
input and new tensors (target 1/4 of the loop's); the model's speed-ups and memory ratios (targets 2x and 0.6x).

    python benchmarks/plot_bench.py --lif lif.json --model model.json --out bench.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from spikformers.viz import _plt, _save

LIF_TARGET, TRAIN_TARGET, PEAK_TARGET, SAVED_TARGET = 6.0, 2.0, 0.6, 0.25


def _label(name: str, res: dict) -> str:
    return f"fused ({res['auto_saved']})" if name == "fused" else name


def _lif_speed(ax, lif: dict) -> None:
    results = lif["results"]
    variants = [k for k in results[0]["speedup_vs_loop"] if k != "loop"]
    width = 0.8 / len(results)
    for i, res in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(variants))]
        ax.bar(xs, [res["speedup_vs_loop"][k] for k in variants], width, label=f"T={res['shape'][0]}")
    ax.axhline(LIF_TARGET, color="k", ls="--", lw=1, label=f"target {LIF_TARGET:g}x (T=4)")
    ax.set_xticks(range(len(variants)), [_label(k, results[0]) for k in variants], rotation=35, ha="right")
    ax.set_ylabel("fwd+bwd speed-up over the per-step loop")
    ax.set_title(f"LIF {results[0]['shape'][1:]} ({lif['device']}, {lif['threads']} threads)")
    ax.legend(fontsize=8)


def _lif_saved(ax, lif: dict) -> None:
    res = lif["results"][0]
    n = math.prod(res["shape"])
    names = list(res["saved_bytes"])
    new = [res["saved_beyond_input_bytes"][k] / n for k in names]
    ref = [(res["saved_bytes"][k] - res["saved_beyond_input_bytes"][k]) / n for k in names]
    xs = range(len(names))
    ax.bar(xs, new, color="#4c72b0", label="new tensors")
    ax.bar(xs, ref, bottom=new, color="#c7d3e8", hatch="//", label="reference to the input")
    loop = res["saved_bytes"]["loop"] / n
    ax.axhline(SAVED_TARGET * loop, color="k", ls="--", lw=1, label="target: 1/4 of the loop's")
    ax.set_xticks(xs, [_label(k, res) for k in names], rotation=35, ha="right")
    ax.set_ylabel("bytes kept for backward per element and step")
    ax.set_title("LIF: what backward keeps")
    ax.legend(fontsize=8)


def _model(ax, model: dict) -> None:
    bars = {"train speed-up": model["train_speedup"], "infer speed-up": model["infer_speedup"]}
    colors = ["#55a868", "#55a868"]
    for key, label in (("train_peak_ratio", "train peak"), ("train_peak_ratio_checkpointing", "peak, ckpt"),
                       ("saved_ratio", "saved")):
        if key in model:
            bars[label] = model[key]
            colors.append("#dd8452")
    ax.bar(list(bars), list(bars.values()), color=colors)
    for i, v in enumerate(bars.values()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(TRAIN_TARGET, color="#55a868", ls="--", lw=1, label=f"train target {TRAIN_TARGET:g}x")
    ax.axhline(PEAK_TARGET, color="#dd8452", ls="--", lw=1, label=f"peak target {PEAK_TARGET:g} of the reference")
    ax.set_xticks(range(len(bars)), list(bars), rotation=35, ha="right")
    ax.set_title(f"{model['model']}, T={model['T']}, batch {model['batch']}")
    ax.set_ylabel("fused / reference (speed-ups), reference = 1 (memory)")
    ax.legend(fontsize=8)


def plot(lif: dict | None, model: dict | None, out: str | Path) -> Path:
    """One PNG of whichever reports are given; returns its path."""
    if lif is None and model is None:
        raise ValueError("nothing to draw: give --lif, --model or both")
    panels = ([_lif_speed, _lif_saved] if lif else []) + ([_model] if model else [])
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, draw in zip(axes[0], panels):
        draw(ax, model if draw is _model else lif)
    fig.tight_layout()
    return _save(fig, out)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lif", type=Path, help="JSON written by bench_lif.py --json")
    ap.add_argument("--model", type=Path, help="JSON written by bench_model.py --json")
    ap.add_argument("--out", type=Path, default=Path("bench.png"))
    args = ap.parse_args(argv)
    reports = []
    for path in (args.lif, args.model):
        if path is None:
            reports.append(None)
            continue
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"plot_bench: cannot read {path}: {e}") from None
    out = plot(*reports, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
