"""Event dataset classes on small fake trees in each dataset's published layout (built here, never downloaded)."""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikformers.data.events import (
    CIFAR10DVS,
    EVENT_DATASETS,
    NMNIST,
    DVSGesture,
    NCaltech101,
    create_event_dataset,
    events_to_frames,
    read_aedat2,
)
from spikformers.data.events import datasets as ds_mod
from test_event_readers import aedat2_bytes, aedat3_bytes, atis_bytes, gesture_labels_csv, make_events

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
QUIET = dict(progress=False, workers=0)


def build_cifar10dvs(root: Path, per_class: int = 12) -> Path:
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            ev = make_events(40 + i, seed=100 * c + i)
            (d / f"cifar10_{name}_{i}.aedat").write_bytes(aedat2_bytes(ev["x"], ev["y"], ev["p"], ev["t"]))
    return root


def build_nmnist(root: Path, per_digit: int = 2) -> Path:
    for split in ("Train", "Test"):
        for digit in range(10):
            d = root / split / str(digit)
            d.mkdir(parents=True)
            for i in range(per_digit):
                (d / f"{i:05d}.bin").write_bytes(atis_bytes(make_events(30, seed=digit * 10 + i, w=34, h=34)))
    return root


def build_ncaltech(root: Path, classes=("BACKGROUND_Google", "Faces_easy", "accordion"), per_class: int = 20):
    for c, name in enumerate(classes):
        d = root / "Caltech101" / name
        d.mkdir(parents=True)
        for i in range(per_class):
            ev = make_events(25, seed=c * 100 + i, w=240, h=180)
            (d / f"image_{i + 1:04d}.bin").write_bytes(atis_bytes(ev))
    return root


def build_gesture(root: Path) -> Path:
    d = root / "DvsGesture"
    d.mkdir(parents=True)
    recs = {"user01_fluorescent": [(1, 0, 300_000), (2, 300_000, 600_000), (11, 700_000, 900_000)],
            "user02_led": [(5, 100_000, 500_000), (3, 500_000, 1_000_000)],
            "user24_natural": [(7, 0, 1_000_000)]}
    for k, (name, rows) in enumerate(recs.items()):
        ev = make_events(3000, seed=k, t_max=1_000_000)
        (d / f"{name}.aedat").write_bytes(aedat3_bytes(ev, packet_size=700))
        (d / f"{name}_labels.csv").write_text(gesture_labels_csv(rows))
    (d / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser02_led.aedat\n\n")
    (d / "trials_to_test.txt").write_text("user24_natural.aedat\n")
    return root


# ----------------------------------------------------------------------------------------------- CIFAR10-DVS

def test_cifar10dvs_splits_and_frames(tmp_path):
    root = build_cifar10dvs(tmp_path / "cifar")
    train = CIFAR10DVS(root, "train", T=4, **QUIET)
    test = CIFAR10DVS(root, "test", T=4, **QUIET)
    n_train = math.ceil(0.9 * 12)
    assert len(train) == 10 * n_train and len(test) == 10 * (12 - n_train)
    # per class, in sorted (lexicographic) file order: the last ones are test
    airplane = sorted((root / "airplane").glob("*.aedat"))
    assert [s.source for s in test.samples if s.label == 0] == [str(f) for f in airplane[n_train:]]
    assert sorted(train.targets + test.targets) == sorted(list(range(10)) * 12)
    x, y = test[0]
    assert x.shape == (4, 2, 128, 128) and x.dtype == torch.float32 and isinstance(y, int)
    ref = events_to_frames(read_aedat2(test.samples[0].source), 4, (128, 128), "number")
    np.testing.assert_array_equal(x.numpy(), ref)
    assert train.augment is not None and test.augment is None
    # the cache holds one .npy per sample, keyed by T / split mode / size
    files = list(train.cache.dir.glob("*.npy"))
    assert len(files) == len(train) + len(test)
    assert "T4_number_128x128" in train.cache.dir.name and (train.cache.dir / "meta.json").is_file()
    assert not list(train.cache.dir.glob("*.tmp"))


def test_cifar10dvs_other_rules_resize_and_time_split(tmp_path):
    root = build_cifar10dvs(tmp_path / "cifar", per_class=12)
    a = CIFAR10DVS(root, "train", T=3, split_rule="random", seed=1, **QUIET)
    b = CIFAR10DVS(root, "test", T=3, split_rule="random", seed=1, **QUIET)
    assert {s.source for s in a.samples}.isdisjoint({s.source for s in b.samples})
    assert len(a) + len(b) == 120
    assert [s.source for s in CIFAR10DVS(root, "train", T=3, split_rule="random", seed=1, **QUIET).samples] == \
        [s.source for s in a.samples]
    assert [s.source for s in CIFAR10DVS(root, "train", T=3, split_rule="random", seed=2, **QUIET).samples] != \
        [s.source for s in a.samples]
    first = CIFAR10DVS(root, "test", T=3, split_rule="first_100_test", **QUIET)
    assert len(first) == 120  # fewer than 100 files per class: all are test
    with pytest.raises(ValueError, match="unknown split_rule"):
        CIFAR10DVS(root, "train", T=3, split_rule="per_class_80_20", **QUIET)
    small = CIFAR10DVS(root, "test", T=3, size=64, split_by="time", **QUIET)
    x, _ = small[0]
    assert x.shape == (3, 2, 64, 64)
    raw = CIFAR10DVS(root, "test", T=3, split_by="time", cache=False, **QUIET)
    ref = events_to_frames(read_aedat2(raw.samples[0].source), 3, (128, 128), "time")
    np.testing.assert_array_equal(raw[0][0].numpy(), ref)
    fac = create_event_dataset("CIFAR10-DVS", root, "test", T=3, **QUIET)
    assert isinstance(fac, CIFAR10DVS) and len(fac) == 10 * (12 - math.ceil(0.9 * 12))


def test_cache_is_reused_and_repaired(tmp_path, monkeypatch):
    root = build_cifar10dvs(tmp_path / "cifar", per_class=3)
    first = CIFAR10DVS(root, "train", T=2, augment=False, **QUIET)
    x0 = first[0][0]

    def boom(*a, **k):
        raise AssertionError("the reader must not run when the cache is complete")

    monkeypatch.setattr(ds_mod, "read_aedat2", boom)
    again = CIFAR10DVS(root, "train", T=2, augment=False, **QUIET)
    torch.testing.assert_close(again[0][0], x0)
    monkeypatch.undo()
    again.cache.path(again.samples[0].key).write_bytes(b"not an npy file")
    torch.testing.assert_close(again[0][0], x0)  # damaged file: rebuilt from the events
    assert np.load(again.cache.path(again.samples[0].key)).shape == (2, 2, 128, 128)


def test_augmentation_ops():
    x = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).reshape(2, 2, 4, 5)
    s = ds_mod.shift_frames(x, 1, -2)
    assert torch.equal(s[..., 1:, :3], x[..., :3, 2:]) and s[..., 0, :].abs().sum() == 0 and s[..., 3:].sum() == 0
    assert torch.equal(ds_mod.random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(ds_mod.random_hflip(x, p=0.0), x)
    g = torch.Generator().manual_seed(0)
    t = ds_mod.random_translate(x, max_shift=2, generator=g)
    assert t.shape == x.shape and t.sum() <= x.sum()
    assert torch.equal(ds_mod.random_translate(x, max_shift=0.0), x)


# ----------------------------------------------------------------------------------------------- others

def test_dvsgesture_official_split_and_windows(tmp_path):
    root = build_gesture(tmp_path / "gesture")
    train = DVSGesture(root, "train", T=4, **QUIET)
    test = DVSGesture(root, "test", T=4, augment=False, **QUIET)
    assert len(train) == 5 and len(test) == 1
    assert train.targets == [0, 1, 10, 4, 2] and test.targets == [6]
    rec = root / "DvsGesture" / "user01_fluorescent.aedat"
    ev = ds_mod.read_aedat3(rec)
    win = ev[(ev["t"] >= 300_000) & (ev["t"] < 600_000)]
    train.augment = None
    np.testing.assert_array_equal(train[1][0].numpy(), events_to_frames(win, 4, (128, 128)))
    # root may also be the DvsGesture folder itself
    assert len(DVSGesture(root / "DvsGesture", "test", T=4, **QUIET)) == 1
    with pytest.raises(RuntimeError, match="research.ibm.com"):
        DVSGesture(root, "test", T=4, download=True, **QUIET)


def test_nmnist_and_parallel_cache_build(tmp_path):
    root = build_nmnist(tmp_path / "nmnist")
    train = NMNIST(root, "train", T=5, progress=False, workers=2)
    assert len(train) == 20 and train.targets == sorted(train.targets) and set(train.targets) == set(range(10))
    x, y = train[3]
    assert x.shape == (5, 2, 34, 34)
    assert len(list(train.cache.dir.glob("*.npy"))) == 20
    test = NMNIST(root, "test", T=5, **QUIET)
    assert len(test) == 20


def test_ncaltech101_layout_and_rules(tmp_path):
    root = build_ncaltech(tmp_path / "ncal")
    train = NCaltech101(root, "train", T=2, **QUIET)
    test = NCaltech101(root, "test", T=2, **QUIET)
    assert train.classes == ["BACKGROUND_Google", "Faces_easy", "accordion"]
    assert len(train) == 3 * 18 and len(test) == 3 * 2
    assert test[0][0].shape == (2, 2, 180, 240)
    r = NCaltech101(root, "test", T=2, split_rule="random", **QUIET)
    assert len(r) == 6
    with pytest.raises(ValueError, match="first_100_test"):
        NCaltech101(root, "test", T=2, split_rule="first_100_test", **QUIET)


def test_out_of_sensor_events_name_the_file(tmp_path):
    root = build_nmnist(tmp_path / "nmnist", per_digit=1)
    bad = root / "Test" / "3" / "00000.bin"
    bad.write_bytes(atis_bytes(make_events(5, w=60, h=60)))
    with pytest.raises(ValueError, match=r"00000\.bin: at byte offset \d+: expected coordinates inside the 34x34"):
        NMNIST(root, "test", T=2, **QUIET)


@pytest.mark.parametrize("cls,expect", [
    (CIFAR10DVS, r"(?s)<class>/\*\.aedat.*airplane.*figshare"),
    (DVSGesture, r"(?s)DvsGesture/ containing user\*_\*\.aedat.*trials_to_train\.txt.*research\.ibm\.com"),
    (NCaltech101, r"(?s)Caltech101/<class>/\*\.bin.*garrickorchard\.com/datasets/n-caltech101"),
    (NMNIST, r"(?s)Train/<digit>/\*\.bin.*Test/<digit>.*garrickorchard\.com/datasets/n-mnist"),
])
def test_missing_root_message(tmp_path, cls, expect):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=expect) as info:
        cls(missing, "train", **QUIET)
    assert str(missing) in str(info.value)


def test_registry_and_factory(tmp_path):
    assert set(EVENT_DATASETS) == {"cifar10dvs", "dvsgesture", "ncaltech101", "nmnist"}
    for name, info in EVENT_DATASETS.items():
        assert info["in_chans"] == 2 and info["num_classes"] > 0 and len(info["size"]) == 2
        assert ds_mod._CLASSES[name].native_size == info["size"]
    with pytest.raises(ValueError, match="unknown event dataset"):
        create_event_dataset("nope", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        create_event_dataset("nmnist", tmp_path, split="val")


# ----------------------------------------------------------------------------------------------- download path

def _zip_dir(src: Path, arcroot: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w") as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f.relative_to(arcroot))


def test_nmnist_download_from_file_url(tmp_path, monkeypatch):
    """download=True fetches, checks the md5 and extracts; a present archive is not fetched again."""
    staging = build_nmnist(tmp_path / "staging", per_digit=1)
    archive = tmp_path / "served" / "train.zip"
    archive.parent.mkdir()
    _zip_dir(staging / "Train", staging, archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    res = ds_mod.Resource(archive.as_uri(), "train.zip", md5)
    monkeypatch.setitem(NMNIST._split_resources, "train", res)
    root = tmp_path / "root"
    d = NMNIST(root, "train", T=2, download=True, **QUIET)
    assert len(d) == 10 and (root / "train.zip").is_file() and (root / "Train" / "7").is_dir()

    def no_fetch(url, dest):
        raise AssertionError("archive already present with the right md5: must not download")

    monkeypatch.setattr(ds_mod, "_fetch", no_fetch)
    assert len(NMNIST(root, "train", T=2, download=True, **QUIET)) == 10
    bad = ds_mod.Resource(archive.as_uri(), "train.zip", "0" * 32)
    monkeypatch.undo()
    monkeypatch.setitem(NMNIST._split_resources, "train", bad)
    with pytest.raises(RuntimeError, match="md5"):
        NMNIST(tmp_path / "root2", "train", T=2, download=True, **QUIET)


def test_ncaltech101_download_nested_archive(tmp_path, monkeypatch):
    staging = build_ncaltech(tmp_path / "staging", classes=("a", "b"), per_class=10)
    inner = tmp_path / "pack" / "Caltech101.zip"
    inner.parent.mkdir()
    _zip_dir(staging / "Caltech101", staging, inner)
    outer = tmp_path / "served.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "N-Caltech101/Caltech101.zip")
    res = ds_mod.Resource(outer.as_uri(), "N-Caltech101-archive.zip",
                          hashlib.md5(outer.read_bytes()).hexdigest(), ("Caltech101.zip",))
    monkeypatch.setattr(NCaltech101, "resources", (res,))
    d = NCaltech101(tmp_path / "root", "train", T=2, download=True, **QUIET)
    assert len(d) == 18 and d.classes == ["a", "b"]
