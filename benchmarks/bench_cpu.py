"""Run bench_model.py and bench_lif.py once per build of the C++ kernels and write the results as Markdown.

The kernels are compiled for one ``-march`` per process (``$SPIKFORMERS_CPU_ARCH``, unset: ``native``), so each
build gets its own pair of processes. The section written (to stdout, and to ``--out``) names the CPU from
``/proc/cpuinfo`` (model name, whether it has AVX-512F, AVX2 and FMA), the date and the commit; then per build one
table of every cell (input kind x model state x batch) against SpikingJelly 2.0, the LIF's speed-up, the peak-RSS
ratio, and one line per target of the list below saying whether it is met, with the measured figure.

    python benchmarks/bench_cpu.py [--builds native x86-64-v3] [--out section.md [--append]] [--repeats 5]

Targets (the default model, ``spikformer_4_384_cifar``, on every build):

- training step >= 2x SJ's at batch 32 and >= 1.5x at batch 8, in every cell (input kind and model state);
- never below the dense path: fused / dense (dense time / fused time) >= 1 in every cell, training and
  inference, "within spread" when the median is below 1 but a paired repetition reaches 1;
- LIF forward + backward at [4, 64, 384, 64] >= 6x SJ's ``LIFNode``;
- inference >= 5x SJ's at batch 32, in every cell;
- peak RSS growth of a training step at batch 32 (fresh processes) <= 0.4x SJ's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "spikformer_4_384_cifar"
TRAIN_TARGETS = {32: 2.0, 8: 1.5}  # batch -> training-step speed-up over SJ
INFER_BATCH, INFER_TARGET = 32, 5.0
LIF_SHAPE, LIF_TARGET = [4, 64, 384, 64], 6.0
RSS_BATCH, RSS_TARGET = 32, 0.4
ISA = ("avx512f", "avx2", "fma")
# what x86-64-v3 assumes beyond x86-64 (the flag names /proc/cpuinfo uses); a CPU without them cannot run it
X86_64_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, the ISA flags of :data:`ISA` (True / False), all flags and the logical CPU count."""
    name, flags, count = None, set(), 0
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            count += 1
        elif key == "model name" and name is None:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    if name is None:
        import platform

        name = platform.processor() or platform.machine() or "unknown CPU"
    return {"model": name, "isa": {f: f in flags for f in ISA}, "flags": sorted(flags), "logical_cpus": count}


def git_commit() -> str:
    """``git rev-parse --short HEAD`` of this checkout, ``+dirty`` when tracked files have uncommitted changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def build_refusal(build: str, cpu: dict[str, Any]) -> str | None:
    """Why ``build`` cannot run on this CPU, or None."""
    if build == "x86-64-v3" and cpu["flags"]:
        missing = [f for f in X86_64_V3 if f not in cpu["flags"]]
        if missing:
            return f"this CPU lacks {', '.join(missing)}"
    return None


def run_script(script: str, args: list[str], build: str, out: Path) -> dict[str, Any]:
    """Run ``benchmarks/<script>.py args --json out`` with the kernels built for ``build``; returns its JSON.

    Its output goes to this process's stderr as it comes (progress); a failure ends in a one-line error."""
    env = dict(os.environ)
    env.pop("SPIKFORMERS_CPU_ARCH", None)
    if build != "native":
        env["SPIKFORMERS_CPU_ARCH"] = build
    src = HERE.parent / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(HERE / f"{script}.py"), *args, "--json", str(out)]
    print(f"[{build}] {' '.join(shlex.quote(c) for c in cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:  # type: ignore[union-attr]
        sys.stderr.write(line)
        last = line.strip() or last
    if proc.wait() != 0:
        raise SystemExit(f"bench_cpu: {script}.py failed for build {build}: {last}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------------
# targets


def _cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['input']} / {cell['state']} / batch {cell['batch']}"


def _worst(cells: list[dict[str, Any]], mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cell whose fused speed-up over SJ in ``mode`` is lowest, and that speed-up's figures."""
    worst = min(cells, key=lambda c: c["speedup_vs_sj"]["fused"][mode]["ratio"])
    return worst, worst["speedup_vs_sj"]["fused"][mode]


def _speed_target(model: dict[str, Any], batch: int, mode: str, goal: float, what: str) -> dict[str, Any]:
    text = f"{what} >= {goal:g}x SJ's at batch {batch}, every input kind and state"
    if model["sj"]["config"] is None:
        return {"target": text, "status": "not measured", "figure": f"SJ {model['sj']['status']}"}
    cells = [c for c in model["cells"] if c["batch"] == batch]
    if not cells:
        return {"target": text, "status": "not measured", "figure": f"no batch-{batch} cells"}
    cell, r = _worst(cells, mode)
    best = max(c["speedup_vs_sj"]["fused"][mode]["ratio"] for c in cells)
    return {"target": text, "status": "met" if r["ratio"] >= goal else "not met",
            "figure": f"lowest {r['ratio']:.2f}x ({_cell_name(cell)}; paired {r['paired_min']:.2f}-"
                      f"{r['paired_max']:.2f}x), highest {best:.2f}x over {len(cells)} cells"}


def _dense_target(model: dict[str, Any]) -> dict[str, Any]:
    text = "never below the dense path: dense time / fused time >= 1 in every cell (training and inference)"
    rows = [(c, m, c["fused_vs_dense"][m]) for c in model["cells"] for m in ("train", "infer")]
    below = [(c, m, r) for c, m, r in rows if r["ratio"] < 1]
    outside = [(c, m, r) for c, m, r in below if r["paired_max"] < 1]
    cell, mode, r = min(rows, key=lambda row: row[2]["ratio"])
    status = "not met" if outside else "met within spread" if below else "met"
    figure = (f"lowest {r['ratio']:.2f}x ({_cell_name(cell)}, {mode}; paired {r['paired_min']:.2f}-"
              f"{r['paired_max']:.2f}x); {len(below)} of {len(rows)} below 1, {len(outside)} of them with every "
              "paired repetition below 1")
    return {"target": text, "status": status, "figure": figure}


def _lif_target(lif: dict[str, Any]) -> dict[str, Any]:
    text = f"LIF forward + backward at {LIF_SHAPE} >= {LIF_TARGET:g}x SJ's LIFNode"
    res = next((r for r in lif["results"] if r["shape"] == LIF_SHAPE), None)
    if res is None:
        shapes = ", ".join(str(r["shape"]) for r in lif["results"])
        return {"target": text, "status": "not measured", "figure": f"measured at {shapes}"}
    if res["speedup_vs_spikingjelly"] is None:
        return {"target": text, "status": "not measured", "figure": res["spikingjelly"]}
    ratio, paired = res["speedup_vs_spikingjelly"]["fused"], res["paired_vs_spikingjelly"]
    return {"target": text, "status": "met" if ratio >= LIF_TARGET else "not met",
            "figure": f"{ratio:.2f}x (paired {min(paired):.2f}-{max(paired):.2f}x)"}


def _rss_target(model: dict[str, Any]) -> dict[str, Any]:
    text = f"peak RSS growth of a training step at batch {RSS_BATCH} <= {RSS_TARGET:g}x SJ's (fresh processes)"
    rss = model.get("rss")
    if not rss or "ratio_vs_sj" not in rss or "fused" not in rss["ratio_vs_sj"]:
        return {"target": text, "status": "not measured", "figure": "no RSS of fused and SJ in this run"}
    ratio = rss["ratio_vs_sj"]["fused"]
    mb = 2**20
    v = rss["variants"]
    note = "" if rss["batch"] == RSS_BATCH else f"; measured at batch {rss['batch']}, not {RSS_BATCH}"
    status = ("met" if ratio <= RSS_TARGET else "not met") if rss["batch"] == RSS_BATCH else "not measured"
    return {"target": text, "status": status,
            "figure": f"{ratio:.3f}x ({v['fused']['step_bytes'] / mb:.0f} MB against "
                      f"{v['sj']['step_bytes'] / mb:.0f} MB{note})"}


def targets(model: dict[str, Any], lif: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of this benchmark, each with its status (met, met within spread, not met, not measured)."""
    out = [_speed_target(model, b, "train", goal, "training step") for b, goal in TRAIN_TARGETS.items()]
    out.append(_dense_target(model))
    out.append(_lif_target(lif))
    out.append(_speed_target(model, INFER_BATCH, "infer", INFER_TARGET, "inference"))
    out.append(_rss_target(model))
    return out


# ---------------------------------------------------------------------------------------------------------
# markdown


def _ms(cell: dict[str, Any], who: str, mode: str = "train") -> str:
    if who not in cell["median_s"]:
        return "-"
    med, lo, hi = (cell[k][who][mode] * 1e3 for k in ("median_s", "min_s", "max_s"))
    return f"{med:.0f} ({lo:.0f}-{hi:.0f})"


def _ratio(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['ratio']:.2f}x ({r['paired_min']:.2f}-{r['paired_max']:.2f})"


def cell_table(model: dict[str, Any]) -> str:
    """One row per cell: medians (range) in ms, speed-ups with the range of the paired ratios."""
    lines = ["| input | state | batch | SJ train ms | fused ms | dense ms | reference ms | fused x SJ | "
             "fused vs dense | SJ infer ms | fused infer ms | infer x SJ | firing rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in model["cells"]:
        vs = c["speedup_vs_sj"]
        fr = c["firing_rates"]
        rate = f"{fr['mean']:.3f} ({fr['min']:.3f}-{fr['max']:.3f})" if fr["neurons"] else "-"
        lines.append(
            f"| {c['input']} | {c['state']} | {c['batch']} | {_ms(c, 'sj')} | {_ms(c, 'fused')} | {_ms(c, 'dense')} | "
            f"{_ms(c, 'reference')} | {_ratio(vs['fused']['train'] if vs else None)} | "
            f"{_ratio(c['fused_vs_dense']['train'])} | {_ms(c, 'sj', 'infer')} | {_ms(c, 'fused', 'infer')} | "
            f"{_ratio(vs['fused']['infer'] if vs else None)} | {rate} |")
    return "\n".join(lines)


def lif_lines(lif: dict[str, Any]) -> list[str]:
    """The LIF's figures against SJ and the per-step loop, one line per shape."""
    out = []
    for r in lif["results"]:
        med = r["median_s"]
        line = f"- LIF forward + backward at {r['shape']}: fused {med['fused'] * 1e3:.1f} ms"
        if r["speedup_vs_spikingjelly"]:
            p = r["paired_vs_spikingjelly"]
            line += (f", SJ {med['spikingjelly'] * 1e3:.1f} ms: **{r['speedup_vs_spikingjelly']['fused']:.2f}x SJ** "
                     f"(paired {min(p):.2f}-{max(p):.2f})")
        line += f"; {r['speedup_vs_loop']['fused']:.2f}x the per-step loop"
        out.append(line)
    return out


def rss_line(model: dict[str, Any]) -> str:
    rss = model.get("rss")
    if not rss:
        return "- peak RSS: not measured"
    mb = 2**20
    parts = [f"{k} {v['step_bytes'] / mb:.0f} MB ({v['peak_bytes'] / mb:.0f} MB process peak)"
             for k, v in rss["variants"].items()]
    ratio = rss.get("ratio_vs_sj", {}).get("fused")
    return (f"- peak RSS growth of one training step at batch {rss['batch']} ({rss['input']} images, fresh "
            f"processes): {', '.join(parts)}" + (f": **{ratio:.3f}x SJ's**" if ratio is not None else ""))


def build_section(build: str, model: dict[str, Any], lif: dict[str, Any]) -> str:
    """The Markdown of one build: its kernels, the cell table, the LIF and RSS lines, the targets."""
    b = model["build"]
    kernels = (f"`-march={b['arch']}`, {b['threading']}" if b["available"]
               else f"C++ kernels unavailable ({b['error']})")
    mismatch = ""
    if b["available"] and b["arch"] != build:
        mismatch = f" (**asked for {build}, built {b['arch']}**)"
    if b["available"] and f"-march={b['arch']}" not in (b["flags"] or []):
        mismatch += " (**the compiler refused the -march flag: built without it**)"
    lines = [f"### Build `{build}`: kernels {kernels}{mismatch}", "", cell_table(model), ""]
    lines += lif_lines(lif)
    lines.append(rss_line(model))
    lines += ["", "Targets:", ""]
    note = "" if model["model"] == MODEL else f" (stated for {MODEL}; this run measured {model['model']})"
    for t in targets(model, lif):
        lines.append(f"- {t['target']}{note}: **{t['status']}**, {t['figure']}")
    return "\n".join(lines)


def section(runs: dict[str, tuple[dict[str, Any], dict[str, Any]] | str], cpu: dict[str, Any], commit: str,
            date: str, command: str) -> str:
    """The whole Markdown section: the CPU, then one part per build (or the reason it was skipped)."""
    isa = ", ".join(f"{f}: {'yes' if v else 'no'}" for f, v in cpu["isa"].items())
    first = next((r for r in runs.values() if not isinstance(r, str)), None)
    lines = [f"## {cpu['model']}: {date}, commit {commit}", ""]
    lines.append(f"CPU `{cpu['model']}` ({isa}; {cpu['logical_cpus']} logical CPUs).")
    if first is not None:
        model, lif = first
        sj = model["sj"]
        versus = (f"SpikingJelly {sj.get('version', '')} `{sj['label']}` ({sj.get('neuron', '')})"
                  if sj["config"] else f"SpikingJelly {sj['status']}")
        training = model.get("training")
        trained = (f"; trained state: {training['steps']} AdamW steps on digits, batch {training['batch']}, lr "
                   f"{training['lr']:g}, each library's model trained alone from its fresh weights") if training else ""
        lines.append(f"torch {model['torch']}, {model['threads']} threads, {model['device']}. `{model['model']}` "
                     f"(T={model['T']}) against {versus}; medians of {model['repeats']} interleaved repetitions "
                     f"(range in brackets); speed-ups are SJ time / ours, with the range of the ratios paired within "
                     f"each repetition; fused vs dense is dense time / fused time{trained}.")
    lines += ["", f"`{command}`", ""]
    for build, run in runs.items():
        if isinstance(run, str):
            lines += [f"### Build `{build}`: skipped, {run}", ""]
        else:
            lines += [build_section(build, *run), ""]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", nargs="+", default=["native", "x86-64-v3"],
                    help="-march values to build the kernels for, one pair of runs each (native: this CPU's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown section to this file")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    ap.add_argument("--json-dir", type=Path, default=None, help="keep the scripts' JSON here (one pair per build)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--batch", nargs="+", default=["8", "32"])
    ap.add_argument("--repeats", default="5")
    ap.add_argument("--inputs", nargs="+", default=None)
    ap.add_argument("--states", nargs="+", default=None)
    ap.add_argument("--train-steps", default=None)
    ap.add_argument("--rss-batch", default=str(RSS_BATCH))
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="where the trained weights are kept for every build (default: a temporary folder)")
    ap.add_argument("--lif-T", nargs="+", default=["4", "16"])
    ap.add_argument("--lif-shape", nargs="+", default=["64", "384", "64"])
    ap.add_argument("--lif-repeats", default="15")
    args = ap.parse_args(argv)
    if args.append and args.out is None:
        ap.error("--append needs --out FILE")
    return args


def model_args(args: argparse.Namespace, state_dir: Path) -> list[str]:
    """The command-line arguments of bench_model.py."""
    out = ["--model", args.model, "--batch", *args.batch, "--repeats", args.repeats, "--rss-batch", args.rss_batch,
           "--state-dir", str(state_dir), "--device", "cpu"]
    for flag, value in (("--inputs", args.inputs), ("--states", args.states)):
        if value:
            out += [flag, *value]
    if args.train_steps:
        out += ["--train-steps", args.train_steps]
    if args.no_rss:
        out.append("--no-rss")
    return out


def main(argv: list[str] | None = None) -> str:
    """Run every build; print the section and write it to ``--out``; returns it."""
    args = parse_args(argv)
    cpu = cpu_info()
    commit = git_commit()
    date = datetime.date.today().isoformat()
    command = "python benchmarks/bench_cpu.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    runs: dict[str, tuple[dict[str, Any], dict[str, Any]] | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        json_dir = args.json_dir or Path(tmp)
        json_dir.mkdir(parents=True, exist_ok=True)
        state_dir = args.state_dir or Path(tmp) / "states"
        for build in args.builds:
            refusal = build_refusal(build, cpu)
            if refusal:
                runs[build] = refusal
                print(f"[{build}] skipped: {refusal}", file=sys.stderr)
                continue
            model = run_script("bench_model", model_args(args, state_dir), build, json_dir / f"model_{build}.json")
            lif = run_script("bench_lif", ["--T", *args.lif_T, "--shape", *args.lif_shape, "--repeats",
                                           args.lif_repeats, "--device", "cpu"], build, json_dir / f"lif_{build}.json")
            runs[build] = (model, lif)
    text = section(runs, cpu, commit, date, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        gap = "\n" if args.append and args.out.exists() and args.out.stat().st_size else ""
        with open(args.out, "a" if args.append else "w") as f:
            f.write(gap + text)
    return text


if __name__ == "__main__":
    main()
