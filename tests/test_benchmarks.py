"""The benchmark scripts run end to end at small sizes, and what they report holds by construction.

Timings are never asserted (they belong to the scripts' own runs); what is checked is that each script still
runs against the library as it is now, that its ratios are the ones its recorded times give, that its byte counts
and equality checks say what they must, and that bench_cpu.py judges its targets from the figures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "spikformer_1_64_cifar"


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sj_missing() -> bool:
    return load("bench_model").sj_importable() is not None


needs_sj = pytest.mark.skipif(sj_missing(), reason="spikingjelly not importable")


def run_main(module: str, argv: list[str]) -> tuple[dict, str]:
    """A script's ``main(argv)``: its report and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = load(module).main(argv)
    return report, printed.getvalue()


@pytest.fixture(scope="module")
def lif_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """bench_lif.py at [4, 2, 8, 16], one repetition: its report, its JSON file and what it printed."""
    out = tmp_path_factory.mktemp("lif") / "lif.json"
    report, printed = run_main("bench_lif", ["--T", "4", "--repeats", "1", "--shape", "2", "8", "16",
                                             "--json", str(out)])
    return report, out, printed


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str, Path]:
    """bench_model.py on a one-block 64-wide Spikformer against SJ's of the same shape: digits images, fresh and
    after one training step, batch 2, two repetitions; its report, JSON, output and the trained-weights folder."""
    tmp = tmp_path_factory.mktemp("model")
    out, states = tmp / "model.json", tmp / "states"
    report, printed = run_main("bench_model", [
        "--model", TINY, "--batch", "2", "--repeats", "2", "--inputs", "digits", "--states", "fresh", "trained",
        "--train-steps", "1", "--train-batch", "4", "--state-dir", str(states), "--no-rss", "--json", str(out)])
    return report, out, printed, states


def test_bench_lif_small_shape_counts_saved_bytes_per_element(lif_run) -> None:
    _, out, printed = lif_run
    written = json.loads(out.read_text())  # the figures below are read back from the file the script wrote
    assert written["device"] == "cpu" and written["threads"] == torch.get_num_threads()
    (res,) = written["results"]
    assert res["shape"] == [4, 2, 8, 16]
    n = 4 * 2 * 8 * 16
    per_element = {k: v / n for k, v in res["saved_bytes"].items()}
    # the loop keeps the surrogate's input and the reset mask, 4 bytes each, at every step
    assert per_element["loop"] == 8
    assert per_element["fused_q16"] == 2 and res["saved_ratio_vs_loop"]["fused_q16"] == 0.25
    assert per_element["fused_q24"] == 3
    assert per_element["fused_exact"] == 4
    if res["auto_saved"] == "recompute":  # keeps only its input: nothing beyond it
        assert res["saved_beyond_input_bytes"]["fused"] == 0 and per_element["fused"] == 4
    for k, ratio in res["speedup_vs_loop"].items():
        assert math.isfinite(ratio) and ratio > 0, k
    assert len(res["paired_speedups"]) == 1 and res["paired_speedups"][0] > 0
    assert "LIF fwd+bwd at [4, 2, 8, 16]" in printed and "paired within each repetition" in printed
    # the printed table's saved/loop column says the same: 2 bytes of q16 against the loop's 8
    row = next(line.split() for line in printed.splitlines() if line.startswith("fused_q16 "))
    assert row[-2] == "0.250"
    assert written["build"]["arch"] == (os.environ.get("SPIKFORMERS_CPU_ARCH") or "native")


@needs_sj
def test_bench_lif_speedup_over_spikingjelly_is_its_time_over_ours(lif_run) -> None:
    (res,) = json.loads(lif_run[1].read_text())["results"]
    assert res["spikingjelly"] == "measured"
    med = res["median_s"]
    for k, ratio in res["speedup_vs_spikingjelly"].items():
        assert ratio == pytest.approx(med["spikingjelly"] / med[k], rel=1e-12), k
    # one repetition: the paired ratio is the ratio of the two (single) times
    assert res["paired_vs_spikingjelly"] == [pytest.approx(med["spikingjelly"] / med["fused"], rel=1e-12)]
    assert "fused vs SpikingJelly's LIFNode" in lif_run[2]


@needs_sj
def test_bench_model_ratios_come_from_the_recorded_times(model_run) -> None:
    report, out, printed, _ = model_run
    written = json.loads(out.read_text())
    assert written["model"] == TINY and written["sj"]["status"] == "measured"
    assert [(c["input"], c["state"], c["batch"]) for c in written["cells"]] == [("digits", "fresh", 2),
                                                                              ("digits", "trained", 2)]
    for cell in written["cells"]:
        times = cell["times_s"]
        assert set(times) == {"sj", "fused", "dense", "reference"}
        assert all(len(times[k][m]) == 2 for k in times for m in ("train", "infer"))
        for mode in ("train", "infer"):
            sj, fused, dense = (times[k][mode] for k in ("sj", "fused", "dense"))
            vs_sj = cell["speedup_vs_sj"]["fused"][mode]
            assert vs_sj["ratio"] == pytest.approx(statistics.median(sj) / statistics.median(fused), rel=1e-12)
            assert vs_sj["paired"] == pytest.approx([s / f for s, f in zip(sj, fused)], rel=1e-12)
            assert vs_sj["paired_min"] == min(vs_sj["paired"]) and vs_sj["paired_max"] == max(vs_sj["paired"])
            fd = cell["fused_vs_dense"][mode]
            assert fd["ratio"] == pytest.approx(statistics.median(dense) / statistics.median(fused), rel=1e-12)
            ref = cell["speedup_vs_reference"]["dense"][mode]
            assert ref["ratio"] == pytest.approx(statistics.median(times["reference"][mode]) /
                                                 statistics.median(dense), rel=1e-12)
            assert cell["median_s"]["sj"][mode] == statistics.median(sj)
            assert cell["min_s"]["fused"][mode] == min(fused) and cell["max_s"]["fused"][mode] == max(fused)
        rates = cell["firing_rates"]
        assert rates["neurons"] > 0 and 0 <= rates["min"] <= rates["mean"] <= rates["max"] < 1 and rates["mean"] > 0
    assert "summary:" in printed and "fused vs dense (dense time / fused time)" in printed


@needs_sj
def test_bench_model_trains_both_libraries_and_keeps_the_weights(model_run) -> None:
    report, _, printed, states = model_run
    log = report["training"]
    assert log["steps"] == 1 and set(log["losses"]) == {"ours", "sj"}
    (cache,) = states.glob("trained_*.pt")
    saved = torch.load(cache, weights_only=True)["states"]
    bench = load("bench_model")
    fresh = bench.build("auto", "cpu", TINY).state_dict()
    # one AdamW step moved every side's weights away from the fresh ones
    assert any(not torch.equal(fresh[k], v) for k, v in saved["ours"].items())
    sj_fresh = bench.build_sj(bench.sj_kwargs(TINY), "cpu").state_dict()
    assert any(not torch.equal(sj_fresh[k], v) for k, v in saved["sj"].items())
    assert "trained sj 1 steps on digits (batch 4" in printed


@pytest.fixture(scope="module")
def no_sj_run(model_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """bench_model.py without SJ, on the trained weights the model_run fixture kept, with the memory report."""
    return run_main("bench_model", [
        "--model", TINY, "--batch", "2", "--repeats", "1", "--inputs", "uniform", "--states", "trained",
        "--train-steps", "1", "--train-batch", "4", "--state-dir", str(model_run[3]), "--no-sj", "--no-rss",
        "--memory", "--infer-T", "4", "--chunk", "2"])


def test_bench_model_without_spikingjelly_reuses_the_kept_weights(no_sj_run) -> None:
    report, printed = no_sj_run
    assert report["sj"]["status"] == "skipped: --no-sj" and report["sj"]["config"] is None
    (cell,) = report["cells"]
    assert cell["speedup_vs_sj"] is None and set(cell["times_s"]) == {"fused", "dense", "reference"}
    assert "cached" in report["training"] and "trained weights read from" in printed


def test_bench_model_memory_report_keeps_less_than_the_reference(no_sj_run) -> None:
    mem = no_sj_run[0]["memory"]
    assert mem["chunked_logits_equal"] is True
    # compact saved spikes and fused units keep less than the reference's float activations
    assert mem["saved_ratio"] < mem["saved_ratio_split"] < 1
    assert "logits identical: True" in no_sj_run[1]


@needs_sj
def test_bench_model_sj_counterpart_of_the_default_is_spikformer_cifar10() -> None:
    from spikingjelly.activation_based.model import spikformer as sjs

    bench = load("bench_model")
    kwargs = bench.sj_kwargs(bench.MODEL)
    assert kwargs == bench.SJ_CIFAR10 and bench.sj_label(kwargs) == "spikformer_cifar10(T=4, num_classes=10)"
    ours = {k: v.shape for k, v in sjs.Spikformer(**kwargs).state_dict().items()}
    factory = {k: v.shape for k, v in sjs.spikformer_cifar10(T=4, num_classes=10).state_dict().items()}
    assert ours == factory
    tiny = bench.sj_kwargs(TINY)
    assert (tiny["embed_dims"], tiny["depths"], tiny["num_heads"]) == (64, 1, 2)


@needs_sj
def test_bench_model_peak_rss_ratio_is_ours_over_sj(monkeypatch) -> None:
    bench = load("bench_model")
    monkeypatch.setattr(bench, "rss_in_fresh_process", bench.rss_child)  # in this process: the logic, quickly
    args = Namespace(model=TINY, sj=bench.sj_kwargs(TINY), rss_batch=2, inputs=["uniform"], seed=0,
                     rss_variants=["fused", "sj"])
    rep = bench.rss_report(args)
    v = rep["variants"]
    for k in ("fused", "sj"):
        assert v[k]["peak_bytes"] >= v[k]["before_bytes"] > 0
        assert v[k]["step_bytes"] == v[k]["peak_bytes"] - v[k]["before_bytes"]
    assert rep["ratio_vs_sj"]["fused"] == v["fused"]["step_bytes"] / v["sj"]["step_bytes"]
    assert rep["peak_ratio_vs_sj"]["fused"] == v["fused"]["peak_bytes"] / v["sj"]["peak_bytes"]


@pytest.mark.slow
def test_bench_model_peak_rss_in_a_fresh_process() -> None:
    bench = load("bench_model")
    spec = dict(variant="fused", model=TINY, sj=None, batch=2, input="uniform", seed=0, threads=1)
    got = bench.rss_in_fresh_process(spec)
    assert got["peak_bytes"] >= got["before_bytes"] > 0 and got["step_bytes"] > 0
    with pytest.raises(RuntimeError, match=r"the RSS measurement of fused failed: .*unknown model"):
        bench.rss_in_fresh_process({**spec, "model": "nomodel_1_1"})


def test_bench_model_refuses_bad_input(capsys) -> None:
    bench = load("bench_model")
    with pytest.raises(SystemExit):
        bench.main(["--model", "spikformer_2_256_dvs"])
    assert "--model spikformer_2_256_dvs: takes 2x128 inputs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--batch", "0"])
    assert "argument --batch: must be 1 or more, got 0" in capsys.readouterr().err
    if not sj_missing():
        with pytest.raises(SystemExit):
            bench.main(["--model", "qkformer_4_384_cifar"])
        assert "spikformer_* models only (pass --no-sj)" in capsys.readouterr().err


def test_plot_bench_draws_both_reports(lif_run, model_run, tmp_path: Path) -> None:
    plot = load("plot_bench")
    out = plot.main(["--lif", str(lif_run[1]), "--model", str(model_run[1]), "--out", str(tmp_path / "b.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_model = plot.main(["--model", str(model_run[1]), "--out", str(tmp_path / "m.png")])
    assert only_model.stat().st_size > 0
    with pytest.raises(SystemExit, match=r"cannot read .*missing\.json"):
        plot.main(["--lif", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="nothing to draw"):
        plot.plot(None, None, tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------------------
# bench_cpu.py


def fake_model(cells: list[tuple[str, int, dict[str, dict[str, list[float]]]]], rss: tuple[int, int] | None = None,
               rss_batch: int = 32) -> dict:
    """A bench_model report with the given (input, batch, times) cells, built by the script's own cell_report."""
    bench = load("bench_model")
    report = {"model": "spikformer_4_384_cifar", "sj": {"config": {"T": 4}, "status": "measured", "label": "x"},
              "build": {"available": True, "arch": "native", "flags": ["-march=native"], "threading": "openmp"},
              "cells": []}
    for kind, batch, times in cells:
        cell = {"input": kind, "state": "fresh", "batch": batch, **bench.cell_report(times),
                "firing_rates": {"mean": 0.1, "min": 0.01, "max": 0.2, "neurons": 3}}
        report["cells"].append(cell)
    if rss:
        report["rss"] = {"batch": rss_batch, "input": "uniform", "variants": {
            "fused": {"step_bytes": rss[0], "peak_bytes": rss[0] + 100}, "sj": {"step_bytes": rss[1],
                                                                             "peak_bytes": rss[1] + 100}},
            "ratio_vs_sj": {"fused": rss[0] / rss[1]}}
    return report


def times(sj: float, fused: list[float], dense: list[float], infer: float = 1.0) -> dict:
    """Times of one cell: SJ constant, ours as given (train), inference SJ / fused = ``infer``."""
    n = len(fused)
    return {"sj": {"train": [sj] * n, "infer": [infer] * n}, "fused": {"train": fused, "infer": [1.0] * n},
            "dense": {"train": dense, "infer": [1.0] * n}, "reference": {"train": [9.0] * n, "infer": [9.0] * n}}


def fake_lif(ratio: float) -> dict:
    return {"results": [{"shape": [4, 64, 384, 64], "median_s": {"fused": 0.1, "spikingjelly": 0.1 * ratio},
                         "speedup_vs_spikingjelly": {"fused": ratio}, "paired_vs_spikingjelly": [ratio * 0.9, ratio],
                         "speedup_vs_loop": {"fused": 7.0}, "spikingjelly": "measured"}]}


def test_bench_cpu_targets_are_judged_from_the_figures() -> None:
    cpu = load("bench_cpu")
    model = fake_model([("uniform", 32, times(4.0, [2.0, 1.9, 2.1], [2.1, 2.0, 2.2], infer=6.0)),
                        ("normal", 32, times(4.0, [2.1, 2.0, 2.2], [2.0, 2.1, 2.3], infer=4.0)),
                        ("uniform", 8, times(3.0, [1.9, 2.0, 2.1], [2.0, 2.1, 2.2], infer=6.0))],
                       rss=(40, 100))
    train32, train8, dense, lif, infer, rss = cpu.targets(model, fake_lif(6.5))
    # batch 32: 4.0 / 2.0 = 2.0 in the first cell, 4.0 / 2.1 = 1.90 in the second: the worst cell decides
    assert "batch 32" in train32["target"] and train32["status"] == "not met"
    assert train32["figure"].startswith("lowest 1.90x (normal / fresh / batch 32; paired 1.82-2.00x)")
    assert "batch 8" in train8["target"] and train8["status"] == "met" and train8["figure"].startswith("lowest 1.50x")
    # dense / fused by medians: 2.1 / 2.0, 2.1 / 2.1 and 2.1 / 2.0 in training, 1.0 in inference: never below 1
    assert dense["status"] == "met" and dense["figure"].startswith("lowest 1.00x")
    assert lif["status"] == "met" and lif["figure"] == "6.50x (paired 5.85-6.50x)"
    assert infer["status"] == "not met" and infer["figure"].startswith("lowest 4.00x (normal / fresh / batch 32")
    assert rss["status"] == "met" and rss["figure"].startswith("0.400x (0 MB against 0 MB")


def test_bench_cpu_dense_target_within_spread_and_not_met() -> None:
    cpu = load("bench_cpu")
    # median fused 1.05 against dense 1.0 (0.95x), but one repetition has fused faster: within spread
    within = fake_model([("uniform", 32, times(4.0, [1.05, 0.95, 1.1], [1.0, 1.0, 1.0]))])
    assert cpu._dense_target(within)["status"] == "met within spread"
    # every repetition of fused slower than dense
    slower = fake_model([("uniform", 32, times(4.0, [1.2, 1.1, 1.3], [1.0, 1.0, 1.0]))])
    t = cpu._dense_target(slower)
    assert t["status"] == "not met" and t["figure"].startswith("lowest 0.83x (uniform / fresh / batch 32, train")
    assert cpu._lif_target(fake_lif(5.9))["status"] == "not met"
    assert cpu._rss_target(fake_model([], rss=(50, 100)))["status"] == "not met"
    assert cpu._rss_target(fake_model([], rss=(10, 100), rss_batch=2))["status"] == "not measured"


def test_bench_cpu_reads_the_cpu_and_refuses_builds_it_cannot_run(tmp_path: Path) -> None:
    cpu = load("bench_cpu")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx fma\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx fma\n")
    got = cpu.cpu_info(info)
    assert got["model"] == "Test CPU 9000" and got["logical_cpus"] == 2
    assert got["isa"] == {"avx512f": False, "avx2": False, "fma": True}
    assert "avx2" in cpu.build_refusal("x86-64-v3", got)
    assert cpu.build_refusal("native", got) is None


class _FakeProc:
    """What bench_cpu.run_script needs of a subprocess: stdout lines, an exit status; records its env."""

    seen: list[dict] = []

    def __init__(self, cmd: list[str], env: dict, rc: int = 0, **_: object) -> None:
        _FakeProc.seen.append(env)
        self.rc = rc
        self.stdout = iter(["working\n", "bench_model.py: error: argument --batch: must be 1 or more\n"])
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"ok": True}))

    def wait(self) -> int:
        return self.rc


def test_bench_cpu_runs_each_build_with_its_march(monkeypatch, tmp_path: Path) -> None:
    cpu = load("bench_cpu")
    monkeypatch.setenv("SPIKFORMERS_CPU_ARCH", "something-else")
    monkeypatch.setattr(cpu.subprocess, "Popen", _FakeProc)
    _FakeProc.seen.clear()
    assert cpu.run_script("bench_model", [], "x86-64-v3", tmp_path / "a.json") == {"ok": True}
    assert cpu.run_script("bench_model", [], "native", tmp_path / "b.json") == {"ok": True}
    assert _FakeProc.seen[0]["SPIKFORMERS_CPU_ARCH"] == "x86-64-v3"
    assert "SPIKFORMERS_CPU_ARCH" not in _FakeProc.seen[1]  # native: unset, whatever the caller's environment
    monkeypatch.setattr(cpu.subprocess, "Popen", lambda cmd, **kw: _FakeProc(cmd, rc=2, **kw))
    with pytest.raises(SystemExit, match=r"^bench_cpu: bench_model.py failed for build native: bench_model.py: "
                                         r"error: argument --batch: must be 1 or more$"):
        cpu.run_script("bench_model", [], "native", tmp_path / "c.json")


@pytest.mark.slow
@needs_sj
def test_bench_cpu_end_to_end_writes_a_section(tmp_path: Path) -> None:
    cpu = load("bench_cpu")
    out = tmp_path / "results.md"
    out.write_text("# earlier\n")
    argv = ["--builds", "native", "--model", TINY, "--batch", "2", "--repeats", "1", "--inputs", "uniform",
            "--states", "fresh", "--no-rss", "--lif-T", "4", "--lif-shape", "2", "8", "16", "--lif-repeats", "1",
            "--out", str(out), "--append", "--json-dir", str(tmp_path)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        text = cpu.main(argv)
    assert out.read_text() == "# earlier\n\n" + text and text in printed.getvalue()
    model = json.loads((tmp_path / "model_native.json").read_text())
    assert model["build"]["arch"] == "native"
    (cell,) = model["cells"]
    r = cell["speedup_vs_sj"]["fused"]["train"]
    row = next(line for line in text.splitlines() if line.startswith("| uniform | fresh | 2 |"))
    assert f"| {r['ratio']:.2f}x ({r['paired_min']:.2f}-{r['paired_max']:.2f}) |" in row
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS, capture_output=True,
                          text=True).stdout.strip()
    assert f"commit {head}" in text.splitlines()[0] and cpu.cpu_info()["model"] in text.splitlines()[0]
    assert "### Build `native`: kernels `-march=native`" in text
    assert text.count("**not measured**") >= 4  # a batch-2 run of a tiny model measures none of the targets


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared" / "data").is_dir(),
                    reason="no real event recordings beside the checkout (not shipped; see docs/data.md)")
def test_bench_events_small_run(tmp_path: Path, capsys) -> None:
    bench = load("bench_events")
    out = tmp_path / "events.json"
    bench.main(["--events", "5000", "--repeat", "1", "--workers", "1", "--cache-files", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["cache_files"] == 2
    rows = {r["file"]: r for r in report["readers"]}
    assert {"real N-MNIST", "synthetic ATIS", "synthetic AEDAT2", "synthetic AEDAT3.1"} <= set(rows)
    assert all(rows[f"synthetic {f}"]["events"] == 5000 for f in ("ATIS", "AEDAT2", "AEDAT3.1"))
    for r in rows.values():  # where tonic is installed, both readers find the same events
        assert r.get("tonic_events", r["events"]) == r["events"], r["file"]
    assert "frame-cache build" in capsys.readouterr().out
