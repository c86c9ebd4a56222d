"""DistributedDataParallel on CPU with gloo: gradients of 2 processes equal those of 1 process on the combined
batch, exact metric reduction over shards, a 2-process ``torchrun`` training reaching the 1-process accuracy, and a
2-process job killed part-way through an epoch and resumed ending bit-identical to an uninterrupted one.

BatchNorm in training mode normalises with per-process batch statistics, so 2 x 8 samples and 1 x 16 samples give
different gradients by design; SyncBatchNorm would fix that but torch runs it on CUDA only. The gradient test
therefore keeps the BatchNorm layers in eval mode (fixed statistics), everything else in training mode.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import state_meta
from spikformers.train import distributed as dist_utils
from spikformers.train.config import load_config
from spikformers.train.engine import build_model, wrap_model

OVERRIDES = ["model.name=spikformer_1_64_cifar", "model.T=2", "data.img_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    from spikformers.data import Digits

    d = Digits("test", img_size=8)
    return d.tensors[0][:16].clone(), d.tensors[1][:16].clone()


def _model_with_frozen_bn() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(None, OVERRIDES)).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _grad_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process as torchrun would start it: environment variables, then the engine's own set-up."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = dist_utils.init_distributed("cpu")
    assert info.enabled and torch.distributed.get_backend() == "gloo"
    model = _model_with_frozen_bn()
    ddp = wrap_model(model, load_config(None, OVERRIDES), info)
    x, y = _batch()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    nn.functional.cross_entropy(ddp(xs), ys).backward()
    correct, total = dist_utils.all_reduce_sums([float(rank + 1), 10.0], info.device)
    if rank == 0:
        grads = {n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}
        save_file(grads, out, metadata={"sums": json.dumps([correct, total])})
    dist_utils.cleanup()


def test_two_process_gradients_equal_one_process_on_combined_batch(tmp_path: Path) -> None:
    out = tmp_path / "grads.safetensors"
    mp.spawn(_grad_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = load_file(str(out))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["sums"]) == [3.0, 20.0]  # all_reduce of per-rank sums

    model = _model_with_frozen_bn()
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ref.keys() == ddp_grads.keys() and len(ref) > 10
    assert any(g.abs().max() > 1e-4 for g in ref.values())  # the comparison is not between zeros
    worst = max((ddp_grads[n] - ref[n]).abs().max().item() for n in ref)
    print(f"2 x 8 vs 1 x 16 samples: largest gradient difference {worst:.2e} over {len(ref)} tensors")
    assert worst < 1e-5, f"largest gradient difference {worst:.2e}"


def test_shard_sampler_covers_each_index_once() -> None:
    shards = [list(dist_utils.ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(dist_utils.ShardSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]


TRAIN = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", "4", "--lr", "1e-2",
         "--no-progress", "--set", "optim.warmup_epochs=1", "--set", "train.tensorboard=false"]


def _accuracy(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["test_acc"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun_training_reaches_single_process_band(nproc: int, tmp_path: Path) -> None:
    """Global batch 32 either way (32 on 1 process, 16 per process on 2); both learn the digits to the same band."""
    out = tmp_path / f"run{nproc}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "spikformers", "train", *TRAIN, "--batch-size", str(32 // nproc), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out accuracy:")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == nproc
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 5  # rank 0 alone writes
    acc = _accuracy(out)
    assert acc > 50.0, f"{nproc} process(es): {acc:.2f}% (chance 10%)"
    _BAND[nproc] = acc
    print(f"{nproc} process(es): held-out accuracy {acc:.2f}%, {summary['seconds']} s")
    if len(_BAND) == 2:
        assert abs(_BAND[1] - _BAND[2]) < 15.0, _BAND


_BAND: dict[int, float] = {}


MID_EPOCH = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", "4", "--batch-size", "16",
             "--lr", "1e-2", "--seed", "3", "--no-progress", "--set", "optim.warmup_epochs=1",
             "--set", "data.limit_train=192", "--set", "data.limit_test=96", "--set", "deterministic=true",
             "--set", "train.tensorboard=false", "--set", "train.ema=true", "--set", "train.ema_decay=0.9",
             # 96 samples per process, 6 steps per epoch: the states of steps 5, 10, 15, 20 are all mid-epoch
             "--set", "train.save_every=100", "--set", "train.save_every_steps=5",
             # in-process loading: a loader worker forked beside gloo's threads once hung in fork here (see
             # docs/training.md, "Loader workers under torchrun"); workers' seeding is tested in tests/test_resume.py
             "--set", "data.workers=0"]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "spikformers", "train", *args]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun starts its workers in sessions of their own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_torchrun_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """2 processes (gloo): every process SIGKILLed after a state saved inside an epoch, the
    job resumed with torchrun, ends bit-identical to an uninterrupted 2-process run: weights, EMA, optimiser, RNGs,
    metrics."""
    from spikformers.train.checkpoint import load_train_state

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = subprocess.Popen(_torchrun(*MID_EPOCH, "--out", str(ref)), **quiet)  # type: ignore[call-overload]
    job = subprocess.Popen(_torchrun(*MID_EPOCH, "--out", str(cut)), **quiet)  # type: ignore[call-overload]
    deadline = time.time() + 240
    while state_meta(cut).get("epoch", 0) < 1 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the job finished before it could be killed"
    for pid in [*_children(job.pid), job.pid]:  # the workers, then torchrun
        os.kill(pid, signal.SIGKILL)
    job.wait()
    at_kill = state_meta(cut)
    assert at_kill["steps_per_epoch"] == 6 and 0 < at_kill["step"] < 6 and 1 <= at_kill["epoch"] < 4
    assert len(at_kill["rng"]) == len(at_kill["train"]) == 2  # every process's RNGs and running sums

    done = subprocess.run(_torchrun("--resume", str(cut), "--no-progress"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming epoch {at_kill['epoch'] + 1} at step {at_kill['step']} of 6" in done.stdout
    assert reference.wait(timeout=300) == 0
    for name in ("last.safetensors", "ema.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(cut / name))
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert a.keys() == b.keys() and not different, f"{name}: {different[:3]}"
    (a, meta_a), (b, meta_b) = load_train_state(ref / "state.safetensors"), load_train_state(cut / "state.safetensors")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, f"state.safetensors: {different[:3]}"
    assert meta_a["rng"] == meta_b["rng"] and len(meta_b["rng"]) == 2

    def columns(run: Path) -> list[list[str]]:  # metrics.csv without images_per_s and seconds (wall time)
        return [[v for i, v in enumerate(r.split(",")) if i not in (6, 7)]
                for r in (run / "metrics.csv").read_text().splitlines()]

    assert len(columns(cut)) == 5 and columns(ref) == columns(cut)
