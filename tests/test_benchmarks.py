"""The benchmark scripts run end to end at small sizes, and what they report holds by construction.

Timings are never asserted (they belong to the scripts' own runs); what is checked is that each script still
runs against the library as it is now, and that its byte counts and equality checks say what they must.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_lif_small_shape_counts_saved_bytes_per_element(tmp_path: Path, capsys) -> None:
    bench = load("bench_lif")
    out = tmp_path / "lif.json"
    report = bench.main(["--T", "4", "--repeats", "1", "--shape", "2", "8", "16", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (res,) = report["results"]
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
    assert "LIF fwd+bwd at [4, 2, 8, 16]" in capsys.readouterr().out


def test_bench_model_small_model_reports_identical_chunked_logits(tmp_path: Path, capsys) -> None:
    bench = load("bench_model")
    out = tmp_path / "model.json"
    report = bench.main(["--model", "spikformer_1_64_cifar", "--batch", "2", "--repeats", "2", "--infer-T", "4",
                         "--chunk", "2", "--no-floor", "--json", str(out)])
    assert json.loads(out.read_text())["model"] == "spikformer_1_64_cifar"
    assert report["chunked_logits_equal"] is True
    assert len(report["paired_speedups"]["train"]) == 2
    assert report["train_speedup_paired_median"] > 0
    # compact saved spikes and fused units keep less than the reference's float activations
    assert report["saved_ratio"] < report["saved_ratio_split"] < 1
    printed = capsys.readouterr().out
    assert "paired within each repetition" in printed and "logits identical: True" in printed


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared" / "data").is_dir(),
                    reason="no ../shared/data recordings")
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
