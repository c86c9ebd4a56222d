"""Bad image files and mismatched class folders: named errors, skipping with a report, and ``check-data``.

The trees are built here from real (tiny) JPEG and PNG files written with PIL, plus a JPEG cut to half its bytes
and a text file named ``.jpg``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from spikformers.cli import main


def tiny(epochs: int = 1) -> list[str]:
    """Train flags for a 7k-parameter Spikformer at 16 x 16, one time step, no progress bars or tensorboard."""
    return ["--model", "spikformer_1_16_cifar", "--img-size", "16", "--T", "1", "--epochs", str(epochs),
            "--no-progress", "--set", "train.tensorboard=false"]


def write_tree(root: Path, train: dict[str, int], val: dict[str, int], seed: int = 0) -> Path:
    """An ImageFolder tree of 8 x 8 RGB images, JPEG and PNG alternating, ``{class: count}`` per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, classes in (("train", train), ("val", val)):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / (f"{i}.jpg" if i % 2 == 0 else f"{i}.png"))
    return root


def add_truncated_jpeg(folder: Path, name: str = "broken.jpg") -> Path:
    """A real JPEG with its second half cut off."""
    data = (folder / "0.jpg").read_bytes()
    path = folder / name
    path.write_bytes(data[: len(data) // 2])
    return path


def add_text_as_jpeg(folder: Path, name: str = "notes.jpg") -> Path:
    path = folder / name
    path.write_text("not an image, despite the name\n")
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_is_named_with_its_class(tmp_path: Path, capsys: pytest.CaptureFixture, workers: int) -> None:
    root = write_tree(tmp_path / "tree", {"cat": 2, "dog": 2}, {"cat": 1, "dog": 1})
    bad = add_truncated_jpeg(root / "train" / "dog")
    rc = main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--batch-size", "5", "--workers",
               str(workers), "--out", str(tmp_path / "run"), *tiny()])
    err = capsys.readouterr().err
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("spikformers train: error: bad image ") and len(err.strip().splitlines()) == 1
    assert f"{bad} (class 'dog'): truncated JPEG file (PIL: " in line and "data.skip_bad_images" in line
    assert "Traceback" not in err
    if workers:
        assert line.endswith("(raised in DataLoader worker process 0)")


def test_skip_bad_images_counts_lists_and_trains_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "tree", {"cat": 3, "dog": 3}, {"cat": 2, "dog": 2})
    bad = [add_truncated_jpeg(root / "train" / "cat"), add_text_as_jpeg(root / "train" / "dog"),
           add_truncated_jpeg(root / "val" / "dog")]
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--batch-size", "4", "--workers", "1",
               "--out", str(out), "--set", "data.skip_bad_images=true", *tiny(epochs=2)])
    stdout = capsys.readouterr().out
    assert rc == 0 and (out / "last.safetensors").is_file()
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3  # header + both epochs
    for epoch in (1, 2):  # every epoch reports what its worker processes skipped
        block = stdout.split(f"epoch {epoch}: skipped ")[1].splitlines()
        assert block[0].startswith("3 unreadable image file(s)")
        listed = block[1:4]
        assert sorted(line.split(" (class ")[0].strip() for line in listed) == sorted(str(p) for p in bad)
    assert f"{bad[1]} (class 'dog'): not an image file PIL can identify" in stdout
    assert f"{bad[0]} (class 'cat'): truncated JPEG file" in stdout


def test_skipping_replaces_bad_samples_under_a_distributed_sampler(tmp_path: Path) -> None:
    """Two ranks' shards with a worker each: every index yields a good image of its class, the bad files are
    reported once, and the log is empty afterwards."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import transforms as T

    from spikformers.data.images import CheckedImageFolder, report_skipped_images

    root = write_tree(tmp_path / "tree", {"a": 4, "b": 4}, {})
    bad = add_truncated_jpeg(root / "train" / "a", "1b.jpg")  # sorts between 1.png and 2.jpg: replaced by 2.jpg
    ds = CheckedImageFolder(root / "train", transform=T.ToTensor(), skip_bad_images=True)
    assert len(ds) == 9
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for x, y in DataLoader(ds, batch_size=3, sampler=sampler, num_workers=1):
            assert x.shape[1:] == (3, 8, 8)
            seen += y.tolist()
    assert len(seen) == 10 and sorted(set(seen)) == [0, 1]  # 9 padded to 10 by the sampler
    x, y = ds[ds.samples.index((str(bad), 0))]
    with Image.open(root / "train" / "a" / "2.jpg") as img:
        assert torch.equal(x, T.ToTensor()(img.convert("RGB"))) and y == 0
    entries = report_skipped_images(1, ds)
    assert entries == [(str(bad), "a", entries[0][2])] and entries[0][2].startswith("truncated JPEG file")
    assert report_skipped_images(2, ds) == []  # taken: the next epoch starts from an empty log


def _skip_report_worker(rank: int, world: int, port: int, out: str) -> None:
    """One of two gloo processes: its dataset's log holds one bad file of its own; then the epoch-end report."""
    import json
    from types import SimpleNamespace

    import torch

    from spikformers.data.images import BadFileLog, report_skipped_images

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dataset = SimpleNamespace(bad_files=BadFileLog())  # what report_skipped_images reads of a CheckedImageFolder
    dataset.bad_files.record(f"/data/train/c{rank}/bad{rank}.jpg", f"c{rank}", f"truncated JPEG file (rank {rank})")
    entries = report_skipped_images(4, SimpleNamespace(dataset=dataset))  # as a loader holds it
    Path(out, f"rank{rank}.json").write_text(json.dumps(entries))
    torch.distributed.destroy_process_group()


def test_skip_report_gathers_the_files_every_process_skipped(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Under torchrun each process skips files of its own shard: every process gets the whole list, rank 0 prints
    it once."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_skip_report_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = [[f"/data/train/c{r}/bad{r}.jpg", f"c{r}", f"truncated JPEG file (rank {r})"] for r in (0, 1)]
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == expected
    printed = capfd.readouterr().out
    assert printed.count("epoch 4: skipped 2 unreadable image file(s)") == 1
    assert "/data/train/c0/bad0.jpg (class 'c0'): truncated JPEG file (rank 0)" in printed
    assert "/data/train/c1/bad1.jpg (class 'c1'): truncated JPEG file (rank 1)" in printed


def test_class_folders_that_differ_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "tree", {"cat": 2, "dog": 2, "owl": 1}, {"bird": 1, "cat": 1, "dog": 1})
    rc = main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--batch-size", "4",
               "--out", str(tmp_path / "run"), *tiny()])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"class folders of {root / 'train'} and {root / 'val'} differ" in err
    assert "only in train (1): owl; only in val (1): bird" in err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_check_data_reports_bad_files_counts_and_mismatches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "tree", {"cat": 3, "dog": 2}, {"cat": 2, "dog": 1, "emu": 1})
    truncated = add_truncated_jpeg(root / "train" / "cat")
    text = add_text_as_jpeg(root / "val" / "dog")
    (root / "train" / "yak").mkdir()
    rc = main(["check-data", "--dataset", "imagefolder", "--data-dir", str(root), "--workers", "2", "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert f"  {truncated} (class 'cat'): truncated JPEG file (PIL: Truncated File Read)" in out
    assert f"  {text} (class 'dog'): not an image file PIL can identify (no known image header)" in out
    table = {line.split()[0]: line.split()[1:] for line in out if line.startswith("  ") and len(line.split()) == 3}
    assert table["cat"] == ["4", "2"] and table["dog"] == ["2", "2"] and table["emu"] == ["-", "1"]
    assert table["yak"] == ["0", "-"]
    assert any("only in train (1): yak; only in val (1): emu" in line for line in out)
    assert any(line.startswith(f"empty class folders in {root / 'train'}") for line in out)
    assert out[-1] == ("check-data imagefolder: 2 bad file(s); class folders differ between train and val; "
                       "1 empty class folder(s)")
    # one split, in this process: only its files are read
    assert main(["check-data", "--dataset", "imagefolder", "--data-dir", str(root), "--split", "train",
                 "--workers", "0", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert str(truncated) in out and str(text) not in out and "differ" not in out


def test_check_data_clean_tree_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "tree", {"cat": 2, "dog": 2}, {"cat": 1, "dog": 1})
    assert main(["check-data", "--dataset", "imagenet", "--data-dir", str(root), "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "check-data imagenet: clean, 6 files read"
    assert main(["check-data", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "absent")]) == 2
    assert f"error: no folder {tmp_path / 'absent'}" in capsys.readouterr().err
    (root / "val").rename(root / "valid")
    assert main(["check-data", "--dataset", "imagefolder", "--data-dir", str(root)]) == 2
    assert f"error: no folder {root / 'val'}" in capsys.readouterr().err
    assert main(["check-data", "--dataset", "imagefolder"]) == 2
    assert "needs its root folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["check-data", "--help"])
    assert e.value.code == 0 and "exit status: 0 when every file reads" in capsys.readouterr().out


@pytest.mark.skipif(not (SHARED_DATA / "sample_nmnist.bin").is_file(),
                    reason=f"real ATIS recording {SHARED_DATA / 'sample_nmnist.bin'} not present")
def test_check_data_reads_event_recordings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """N-Caltech101 layout around a real ATIS recording (linked, not copied) and a truncated copy of it."""
    src = SHARED_DATA / "sample_nmnist.bin"
    for c, names in (("ant", ["a0", "a1"]), ("bee", ["b0"])):
        (tmp_path / "Caltech101" / c).mkdir(parents=True)
        for n in names:
            (tmp_path / "Caltech101" / c / f"{n}.bin").symlink_to(src)
    cut = tmp_path / "Caltech101" / "bee" / "b1.bin"
    cut.write_bytes(src.read_bytes()[:1003])
    rc = main(["check-data", "--dataset", "ncaltech101", "--data-dir", str(tmp_path), "--workers", "0",
               "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert (f"  {cut} (class 'bee'): at byte offset 1000: expected a whole number of 5-byte ATIS words, found a "
            "partial word of 3 byte(s) at the end (file truncated?)") in out
    assert out[-1] == "check-data ncaltech101: 1 bad file(s)"
    cut.unlink()
    assert main(["check-data", "--dataset", "ncaltech101", "--data-dir", str(tmp_path), "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "check-data ncaltech101: clean, 3 files read"


def test_check_data_loads_cifar_pickles(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from spikformers.data import check

    assert main(["check-data", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert "no folder" in capsys.readouterr().err
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 1, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    # our bytes are not the published archive's: every file is reported by its MD5 ...
    assert main(["check-data", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert f"{folder / 'test_batch'}: MD5 differs from the published file's" in out
    # ... and with that comparison switched off, the loading itself is what is checked
    monkeypatch.setattr(check, "_md5_matches", lambda path, md5: True)
    assert main(["check-data", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  c1                 10        2" in out and out[-1] == "check-data cifar10: clean, 6 files read"
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    assert main(["check-data", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{folder / 'data_batch_3'}: does not load as a pickle (" in out


def test_bad_event_file_in_the_parallel_frame_cache_build_is_named(tmp_path: Path) -> None:
    """The cache build's worker processes send the reader's EventFileError back whole (before: BrokenProcessPool)."""
    from spikformers.data.events.cache import CacheTask, FrameCache, build_frame_cache
    from spikformers.data.events.readers import EventFileError, read_atis_bin

    words = np.array([[3, 4, 0x80, 0, 10], [5, 6, 0, 0, 20]], dtype=np.uint8)  # two ATIS events, 5 bytes each
    (tmp_path / "good.bin").write_bytes(words.tobytes())
    (tmp_path / "cut.bin").write_bytes(words.tobytes()[:7])
    cache = FrameCache(tmp_path / "cache", "nmnist", 1, "number", (34, 34), {})
    tasks = [CacheTask(str(tmp_path / f"{n}.bin"), read_atis_bin, [n], {"size": (34, 34)}, None)
             for n in ("good", "cut")]
    with pytest.raises(EventFileError, match="cut.bin: at byte offset 5: expected a whole number of 5-byte") as e:
        build_frame_cache(cache, tasks, workers=2, progress=False)
    assert e.value.path == str(tmp_path / "cut.bin") and e.value.offset == 5
