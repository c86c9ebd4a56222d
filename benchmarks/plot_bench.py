"""Draw the JSON of ``bench_lif.py`` and ``bench_model.py`` as one PNG, with the issue's targets as lines.

Three panels: the LIF kernel's forward + backward speed-up over the per-step loop, per variant and T (target 6x
at T = 4); the bytes each LIF variant keeps for backward per element and step, split into the reference to its
input and new tensors (target 1/4 of the loop's); the model's training and inference speed-ups over SpikingJelly
2.0 per cell (input kind / model state / batch), with the range of the paired ratios and the targets (training 2x
at batch 32 and 1.5x at batch 8, inference 5x at batch 32); over our reference when SpikingJelly was skipped.

    python benchmarks/plot_bench.py --lif lif.json --model model.json --out bench.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from spikformers.viz import _plt, _save

LIF_TARGET, SAVED_TARGET = 6.0, 0.25
TRAIN_TARGET, TRAIN_TARGET_B8, INFER_TARGET = 2.0, 1.5, 5.0  # against SpikingJelly 2.0


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
    cells = model["cells"]
    against = "SJ" if cells[0]["speedup_vs_sj"] else "reference"
    key = "speedup_vs_sj" if against == "SJ" else "speedup_vs_reference"
    labels = [f"{c['input']}/{c['state']}/{c['batch']}" for c in cells]
    xs = range(len(cells))
    for off, mode, color in ((-0.2, "train", "#55a868"), (0.2, "infer", "#4c72b0")):
        ratios = [c[key]["fused"][mode] for c in cells]
        # the bar is the ratio of medians, the whisker the range of the ratios paired within each repetition
        ax.bar([x + off for x in xs], [r["ratio"] for r in ratios], 0.4, color=color, label=f"{mode} step",
               yerr=[[r["ratio"] - r["paired_min"] for r in ratios], [r["paired_max"] - r["ratio"] for r in ratios]],
               capsize=2)
    if against == "SJ":
        for goal, label, color in ((TRAIN_TARGET, "train target, batch 32", "#55a868"),
                                   (TRAIN_TARGET_B8, "train target, batch 8", "#8fd19e"),
                                   (INFER_TARGET, "infer target, batch 32", "#4c72b0")):
            ax.axhline(goal, color=color, ls="--", lw=1, label=f"{label} ({goal:g}x)")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=7)
    ax.set_title(f"{model['model']}, T={model['T']}: fused against {against}")
    ax.set_ylabel(f"{against} time / fused time")
    ax.legend(fontsize=7)


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
