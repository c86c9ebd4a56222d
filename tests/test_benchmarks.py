"""The benchmark scripts run end to end at small sizes, and what they report holds by construction.

Timings are never asserted (they belong to the scripts' own runs); what is checked is that each script still
runs against the library as it is now, and that its byte counts and equality checks say what they must.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lif_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """bench_lif.py at [4, 2, 8, 16], one repetition: its report, its JSON file and what it printed."""
    out = tmp_path_factory.mktemp("lif") / "lif.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = load("bench_lif").main(["--T", "4", "--repeats", "1", "--shape", "2", "8", "16", "--json", str(out)])
    return report, out, printed.getvalue()


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """bench_model.py on a one-block 64-wide Spikformer, batch 2, two repetitions."""
    out = tmp_path_factory.mktemp("model") / "model.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = load("bench_model").main(["--model", "spikformer_1_64_cifar", "--batch", "2", "--repeats", "2",
                                           "--infer-T", "4", "--chunk", "2", "--no-floor", "--json", str(out)])
    return report, out, printed.getvalue()


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


def test_bench_model_small_model_reports_identical_chunked_logits(model_run) -> None:
    report, out, printed = model_run
    assert json.loads(out.read_text())["model"] == "spikformer_1_64_cifar"
    assert report["chunked_logits_equal"] is True
    assert len(report["paired_speedups"]["train"]) == 2
    assert report["train_speedup_paired_median"] > 0
    # compact saved spikes and fused units keep less than the reference's float activations
    assert report["saved_ratio"] < report["saved_ratio_split"] < 1
    assert "paired within each repetition" in printed and "logits identical: True" in printed


def test_bench_model_refuses_a_model_of_another_input_shape(capsys) -> None:
    with pytest.raises(SystemExit):
        load("bench_model").main(["--model", "spikformer_2_256_dvs"])
    assert "--model spikformer_2_256_dvs: takes 2x128 inputs" in capsys.readouterr().err


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
