"""The per-machine choice between event-driven and dense kernels (kernels/calibration.py).

A fake timer stands in for the clock: it runs each call and reports a cost by which kernels the call used, so the
tests decide which path is "faster" and check that the layers then take it, with the same numbers either way.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from spikformers.kernels import calibration, cpp, kernel_config, spike_ops

pytestmark = pytest.mark.skipif(not cpp.available(), reason="the compiled CPU kernels are not built here")

SPARSE_KERNELS = ("sparse_linear", "sparse_linear_wgrad", "sparse_conv3x3", "sparse_conv3x3_wgrad")


@pytest.fixture
def used(monkeypatch):
    """Names of the event-driven kernels called (and of oneDNN's transposed conv), in order."""
    calls: list[str] = []
    for name in SPARSE_KERNELS:
        real = getattr(cpp, name)
        monkeypatch.setattr(cpp, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    real_ct = F.conv_transpose2d
    monkeypatch.setattr(spike_ops.F, "conv_transpose2d", lambda *a: calls.append("onednn") or real_ct(*a))
    return calls


def fake_timer(used: list[str], event_driven: float, dense: float = 1.0, onednn: float = 1.0,
               blas: float = 2.0):
    """A timer that runs the call and reports ``event_driven`` if it used an event-driven kernel, ``onednn`` if it
    used the transposed conv, else ``blas`` for a bare matmul trial and ``dense`` for the rest."""
    seen: list[str] = []

    def timer(fn) -> float:
        before = len(used)
        fn()
        new = used[before:]
        del used[before:]  # the trials' own calls are not the layer's
        seen.append(",".join(new))
        if any(n in SPARSE_KERNELS for n in new):
            return event_driven
        if "onednn" in new:
            return onednn
        return blas if not new and timer.kind == "input_grad" else dense

    timer.kind = ""
    timer.seen = seen
    return timer


def spikes(shape: tuple[int, ...], rate: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def run_linear(x: torch.Tensor, K: int = 64, N: int = 96):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(N, K, generator=gen, requires_grad=True)
    x = x.clone().requires_grad_()
    y = spike_ops.spike_linear(x, w)
    g = torch.randn(y.shape, generator=gen)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    want = F.linear(x, w)
    wgx, wgw = torch.autograd.grad(want, (x, w), g)
    torch.testing.assert_close(y, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(gx, wgx, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gw, wgw, atol=1e-3, rtol=1e-5)


def test_break_even_from_the_two_trial_times():
    # the fast path costs 1 + 10 r (ms); dense costs 3 ms: break-even at r = 0.2, kept at 0.9 of it
    assert calibration.break_even_from(3.0, (1.5, 4.0), rates=(0.05, 0.3)) == pytest.approx(0.18)
    assert calibration.break_even_from(1.0, (1.5, 4.0)) == 0.0  # slower even at the lower density: never
    assert calibration.break_even_from(10.0, (1.0, 0.9), cap=0.6) == pytest.approx(0.54)  # never slower: the cap
    assert calibration.break_even_from(10.0, (1.0, 2.0), rates=(0.05, 0.3), cap=0.6) == pytest.approx(0.54)


def test_dense_wins_the_trial_so_a_sparse_layer_runs_dense(used):
    """The case the fixed rule gets wrong on a CPU where event-driven kernels are slow: a 2 % input, far below every
    fixed threshold, runs dense because this machine's trial found dense faster."""
    cal = calibration.Calibration(None, timer=fake_timer(used, event_driven=5.0))
    x = spikes((4, 50, 64), 0.02)
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        run_linear(x)
    assert not [n for n in used if n in SPARSE_KERNELS]
    assert cal.entries["linear/bits/float32/K64/N96/M256"] == 0.0
    assert cal.entries["linear/bits/float32/K64/N96/M256/wgrad"] == 0.0
    with kernel_config(calibrate=False):  # the fixed rule would have run it event-driven
        used.clear()
        run_linear(x)
        assert used[:1] == ["sparse_linear"]


def test_event_driven_wins_the_trial_and_runs(used):
    timer = fake_timer(used, event_driven=0.1)
    cal = calibration.Calibration(None, timer=timer)
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        run_linear(spikes((4, 50, 64), 0.1))
        assert [n for n in used if n in SPARSE_KERNELS] == ["sparse_linear", "sparse_linear_wgrad"]
        used.clear()
        run_linear(torch.ones(4, 50, 64))  # every input fires: above every threshold, dense
        assert not [n for n in used if n in SPARSE_KERNELS]
    assert cal.entries["linear/bits/float32/K64/N96/M256"] == pytest.approx(0.54)


def test_forward_and_weight_gradient_are_decided_apart(used):
    """A trial where the event-driven forward wins and its weight gradient loses gives exactly that split."""
    timer = fake_timer(used, event_driven=0.1)
    cal = calibration.Calibration(None, timer=timer)
    cal.entries["linear/bits/float32/K64/N96/M256/wgrad"] = 0.0  # as if measured: dense weight gradient
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        run_linear(spikes((4, 50, 64), 0.1))
    assert [n for n in used if n in SPARSE_KERNELS] == ["sparse_linear"]


def test_conv_weight_gradient_runs_dense_when_it_wins(used):
    gen = torch.Generator().manual_seed(2)
    x = spikes((2, 16, 8, 8), 0.1).requires_grad_()
    w = torch.randn(24, 16, 3, 3, generator=gen, requires_grad=True)
    cal = calibration.Calibration(None, timer=fake_timer(used, event_driven=0.1))
    cal.entries["conv3x3/bits/float32/C16/O24/H8/W8/B2/wgrad"] = 0.0
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        y = spike_ops.spike_conv2d(x, w, None, 1, 1)
        g = torch.randn(y.shape, generator=gen)
        got = torch.autograd.grad(y, (x, w), g)
    want = torch.autograd.grad(F.conv2d(x, w, None, 1, 1), (x, w), g)
    assert [n for n in used if n in SPARSE_KERNELS] == ["sparse_conv3x3"]
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-5)


def test_input_gradient_takes_the_faster_product(used):
    g, w = torch.randn(300, 96), torch.randn(96, 64)
    for onednn, expected in ((1.0, ["onednn"]), (3.0, [])):  # blas costs 2.0
        timer = fake_timer(used, event_driven=1.0, onednn=onednn)
        timer.kind = "input_grad"
        with kernel_config(calibrate=True), calibration.using_calibration(calibration.Calibration(None, timer=timer)):
            used.clear()
            torch.testing.assert_close(spike_ops._input_grad(g, w), g @ w, atol=1e-4, rtol=1e-5)
        assert used == expected


def test_decisions_are_cached_per_machine(tmp_path, used):
    path = tmp_path / "calibration.json"
    first = calibration.Calibration(path, timer=fake_timer(used, event_driven=5.0))
    with kernel_config(calibrate=True), calibration.using_calibration(first):
        run_linear(spikes((4, 50, 64), 0.02))
    saved = json.loads(path.read_text())
    assert saved["machine"] == calibration.machine_key() and saved["entries"] == first.entries and first.entries

    def no_timing(fn):
        raise AssertionError("a cached decision was measured again")

    again = calibration.Calibration(path, timer=no_timing)
    assert again.entries == first.entries
    with kernel_config(calibrate=True), calibration.using_calibration(again):
        run_linear(spikes((4, 50, 64), 0.02))
    assert calibration.Calibration(path, fresh=True).entries == {}  # SPIKFORMERS_RECALIBRATE / recalibrate()
    saved["machine"]["cpu"] = "another CPU"
    path.write_text(json.dumps(saved))
    assert calibration.Calibration(path).entries == {}  # another machine's file is not used
    path.write_text("{not json")
    assert calibration.Calibration(path).entries == {}


def test_calibration_off_uses_the_fixed_thresholds(used, monkeypatch):
    def no_timing(fn):
        raise AssertionError("calibration is off")

    with kernel_config(calibrate=False), calibration.using_calibration(calibration.Calibration(None, timer=no_timing)):
        run_linear(spikes((4, 50, 64), 0.1))
        assert used[:1] == ["sparse_linear"]
        used.clear()
        monkeypatch.setattr(spike_ops, "SPARSE_MAX_RATE", 0.05)
        monkeypatch.setattr(spike_ops, "SPARSE_WGRAD_MAX_RATE", 0.05)
        run_linear(spikes((4, 50, 64), 0.1))
        assert not [n for n in used if n in SPARSE_KERNELS]


def test_real_timer_settles_every_layer_of_a_model(tmp_path):
    """With the real clock on a small model: every decision lands in the file, each a density in [0, 0.6] or a
    yes/no, and training gives the same loss as the dense path to float rounding."""
    import spikformers

    torch.manual_seed(0)
    model = spikformers.create_model("spikformer_1_64_cifar", T=2).double()  # float64: no spike flips by rounding
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    cal = calibration.Calibration(tmp_path / "d.json")
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        loss = model(x).square().sum()
        loss.backward()
    with kernel_config(event_driven=False):
        dense = model(x).square().sum()
    torch.testing.assert_close(loss, dense, atol=1e-9, rtol=1e-9)
    kinds = {k.split("/")[0] for k in cal.entries if "float64" in k}
    assert {"linear", "conv3x3"} <= kinds, cal.entries
    for key, value in cal.entries.items():
        assert isinstance(value, bool) if key.startswith("input_grad") else 0.0 <= value <= 0.6, (key, value)
    assert json.loads((tmp_path / "d.json").read_text())["entries"] == cal.entries


def test_a_trial_that_fails_leaves_the_fixed_rule(caplog):
    def trial(rate: float):
        def fails() -> None:
            raise RuntimeError("out of memory in the trial")

        return (lambda: None), fails

    cal = calibration.Calibration(None, timer=calibration.best_time)
    with kernel_config(calibrate=True), calibration.using_calibration(cal):
        assert calibration.break_even("linear/bits/float32/K8/N8/M8", trial, 0.25) == 0.25
    assert cal.entries == {} and "out of memory in the trial" in caplog.text


def test_processes_that_start_together_take_the_first_decision(tmp_path):
    """Two runs started at once (a run and its resumption, or two trainings) each open the cache before either has
    written it; the second to reach a shape takes the first one's decision instead of timing its own (a timing under
    load could differ, and with it the float rounding of every later step), and neither loses the other's keys."""
    path = tmp_path / "calibration.json"
    first, second = calibration.Calibration(path), calibration.Calibration(path)  # both see an empty cache
    assert first._settle("linear/a", lambda: 0.25) == 0.25
    timed = []
    assert second._settle("linear/a", lambda: timed.append(1) or 0.5) == 0.25 and not timed
    assert second._settle("linear/b", lambda: 0.4) == 0.4
    assert first._settle("linear/a", lambda: 0.9) == 0.25  # a decision a process took stays
    entries = json.loads(path.read_text())["entries"]
    assert entries == {"linear/a": 0.25, "linear/b": 0.4}


def test_a_trial_leaves_the_random_numbers_of_the_run_alone(tmp_path):
    """Timing a shape draws random trial inputs; the run's own random stream must not see it, or a run that timed a
    shape and one that read the decision from the cache (a resumed run) would go on with other random numbers."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    calibration.Calibration(tmp_path / "c.json")._settle("linear/x", lambda: float(torch.rand(100).sum() > 0))
    assert torch.equal(torch.rand(3), expected)
