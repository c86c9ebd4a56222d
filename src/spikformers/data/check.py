"""``spikformers check-data``: read every file of a dataset, in parallel, before a run trips over one.

It reports the files that do not read (path and reason), the class counts of each split and the class folders
that differ between the train and val trees. ImageFolder trees (``imagefolder``, ``imagenet``) decode every
image as training does (PIL, to RGB); event datasets read every recording with the dataset's own reader;
CIFAR-10/100 load each pickle and compare its MD5 with the published one (torchvision refuses a mismatch).
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli import command

EXIT_HELP = ("exit status: 0 when every file reads and the splits agree, 1 when bad files, class folders that "
             "differ between train and val, or empty class folders are found, 2 on usage errors (unknown "
             "dataset, missing folder)")


@dataclass
class BadFile:
    """A file that does not read: where, its class (None when a file holds several), and why."""

    path: str
    class_name: str | None
    reason: str

    def __str__(self) -> str:
        of_class = f" (class {self.class_name!r})" if self.class_name is not None else ""
        return f"{self.path}{of_class}: {self.reason}"


@dataclass
class SplitReport:
    """One split: its folder, files per class (in label order), the files read and those that failed."""

    split: str
    folder: str
    counts: dict[str, int]
    files: int
    bad: list[BadFile] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # class folders without a single file


@dataclass
class DataReport:
    """What :func:`check_data` found in one dataset."""

    dataset: str
    root: str | None
    splits: list[SplitReport] = field(default_factory=list)
    only_train: list[str] = field(default_factory=list)
    only_val: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def bad(self) -> list[BadFile]:
        """The bad files of every split."""
        return [b for s in self.splits for b in s.bad]

    @property
    def problems(self) -> list[str]:
        """One phrase per kind of problem found; empty when the dataset is clean."""
        out = []
        if self.bad:
            out.append(f"{len(self.bad)} bad file(s)")
        if self.only_train or self.only_val:
            out.append("class folders differ between train and val")
        empty = sum(len(s.empty) for s in self.splits)
        if empty:
            out.append(f"{empty} empty class folder(s)")
        return out


# ------------------------------------------------------------------------------------------------ reading
def _image_problem(path: str) -> str | None:
    """Why an image file does not decode, or None when it does."""
    from .images import BadImageError, read_image

    try:
        read_image(path)
    except BadImageError as e:
        return e.reason
    return None


def _event_problem(task: tuple[str, Callable[..., Any], dict[str, Any]]) -> str | None:
    """Why an event recording does not read with its dataset's reader, or None when it does."""
    from .events.readers import EventFileError

    path, reader, kwargs = task
    try:
        reader(path, **kwargs)
    except EventFileError as e:
        text = str(e)
        return text[len(path) + 2:] if text.startswith(f"{path}: ") else text
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    except Exception as e:  # a reader's library (aedat) failing on bad bytes: report, do not stop the scan
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, progress: bool, desc: str) -> list[Any]:
    """``[fn(item) for item in items]`` in ``workers`` processes (0: here), in order, with a tqdm bar."""
    from tqdm.auto import tqdm

    out: list[Any] = []
    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress, leave=False) as bar:
        if workers == 0 or len(items) < 2:
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        from concurrent.futures import ProcessPoolExecutor

        chunk = max(1, min(256, len(items) // (workers * 16)))  # big enough to amortise, small enough to balance
        with ProcessPoolExecutor(min(workers, len(items))) as pool:
            for result in pool.map(fn, items, chunksize=chunk):
                out.append(result)
                bar.update()
    return out


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------ per kind
def check_image_folder(name: str, root: Path, splits: Sequence[str], workers: int, progress: bool) -> DataReport:
    """Decode every image under ``root/<split>/<class>/`` (the files ImageFolder would use)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from .images import class_folder_differences, class_folders

    report = DataReport(name, str(root))
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}: expected an ImageFolder tree {root}/train/<class>/*.JPEG "
                                    f"and {root}/val/<class>/*.JPEG")
        classes = class_folders(folder)
        if not classes:
            raise FileNotFoundError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
        counts = Counter(classes[t] for _, t in samples)
        reasons = _map(_image_problem, [p for p, _ in samples], workers, progress, f"{name} {split}")
        bad = [BadFile(p, classes[t], r) for (p, t), r in zip(samples, reasons, strict=True) if r is not None]
        report.splits.append(SplitReport(split, str(folder), {c: counts[c] for c in classes}, len(samples), bad,
                                         [c for c in classes if counts[c] == 0]))
    if len(splits) == 2:
        report.only_train, report.only_val = class_folder_differences(root)
    return report


def check_event_dataset(name: str, root: Path, splits: Sequence[str], workers: int, progress: bool) -> DataReport:
    """Read every recording of an event dataset's splits with the dataset's own reader."""
    from .events import create_event_dataset
    from .events.readers import EventFileError

    report = DataReport(name, str(root))
    for split in splits:
        try:  # cache=False: list the samples without converting anything
            ds = create_event_dataset(name, root, split, cache=False, progress=False, augment=False)
        except EventFileError as e:  # a label file beside the recordings (DVS Gesture) that does not parse
            report.splits.append(SplitReport(split, str(root), {}, 0, [BadFile(e.path, None, str(e))]))
            continue
        reader, kwargs = ds._reader()
        sources: dict[str, set[int]] = {}
        for s in ds.samples:
            sources.setdefault(s.source, set()).add(s.label)
        paths = list(sources)
        reasons = _map(_event_problem, [(p, reader, kwargs) for p in paths], workers, progress, f"{name} {split}")
        bad = [BadFile(p, ds.classes[next(iter(sources[p]))] if len(sources[p]) == 1 else None, r)
               for p, r in zip(paths, reasons, strict=True) if r is not None]
        counts = Counter(s.label for s in ds.samples)
        report.splits.append(SplitReport(split, str(root), {c: counts[i] for i, c in enumerate(ds.classes)},
                                         len(paths), bad))
    return report


def _md5_matches(path: Path, md5: str) -> bool:
    from torchvision.datasets.utils import check_md5

    return check_md5(str(path), md5)


def _load_pickle(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A CIFAR pickle's dict, or None and why it does not load."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except OSError as e:
        return None, f"cannot read the file ({e.strerror or e})"
    except Exception as e:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError ...
        return None, f"does not load as a pickle ({type(e).__name__}: {' '.join(str(e).split()) or 'no message'})"
    if not isinstance(data, dict):
        return None, f"holds a {type(data).__name__}, not the dict of a CIFAR batch"
    return data, None


def check_cifar(name: str, root: Path, splits: Sequence[str]) -> DataReport:
    """Load every pickle of torchvision's CIFAR layout and compare its MD5 with the published file's."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    folder = root / cls.base_folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: no folder {folder}: expected torchvision's layout ({cls.base_folder}/ with "
                                "the python pickles); 'spikformers train --download' fetches it")
    report = DataReport(name, str(root))
    meta_path = folder / cls.meta["filename"]
    meta, why = _load_pickle(meta_path) if meta_path.is_file() else (None, "missing")
    classes = list(meta[cls.meta["key"]]) if meta and cls.meta["key"] in meta else None
    meta_bad = why or (None if classes else f"has no {cls.meta['key']!r} list of class names")
    if meta_bad is None and not _md5_matches(meta_path, cls.meta["md5"]):
        meta_bad = "MD5 differs from the published file's (torchvision refuses it: download it again)"
    label_key = "labels" if name == "cifar10" else "fine_labels"
    for i, split in enumerate(splits):
        files = cls.train_list if split == "train" else cls.test_list
        bad = [BadFile(str(meta_path), None, meta_bad)] if meta_bad and i == 0 else []
        counts: Counter[int] = Counter()
        for filename, md5 in files:
            path = folder / filename
            data, why = _load_pickle(path) if path.is_file() else (None, "missing")
            if data is not None and label_key not in data:
                why = f"has no {label_key!r} list"
            elif data is not None and not _md5_matches(path, md5):
                why = "MD5 differs from the published file's (torchvision refuses it: download it again)"
            if why:
                bad.append(BadFile(str(path), None, why))
            if data is not None and label_key in data:
                counts.update(int(t) for t in data[label_key])
        names = classes or [str(c) for c in range(10 if name == "cifar10" else 100)]
        report.splits.append(SplitReport(split, str(folder), {c: counts[k] for k, c in enumerate(names)},
                                         len(files), bad))
    return report


# ------------------------------------------------------------------------------------------------ entry
def check_data(name: str, root: str | Path | None, split: str = "all", workers: int | None = None,
               progress: bool = True) -> DataReport:
    """Read every file of dataset ``name`` under ``root`` and report bad files, class counts and mismatches.

    ``split``: "train", "val" (the test split of event datasets and CIFAR) or "all". ``workers``: processes
    that read files (default: every core; 0 reads in this process). Missing folders raise FileNotFoundError,
    unknown names ValueError; problems in the data go into the report.
    """
    from . import BUNDLED, is_event_dataset, list_datasets

    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    workers = default_workers() if workers is None else workers
    if name not in list_datasets():
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(list_datasets())}")
    if name in BUNDLED:
        return DataReport(name, None, note=f"{name} is bundled with its Python package: no files to check")
    if root is None:
        raise ValueError(f"dataset {name!r} needs its root folder: pass --data-dir DIR")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} (--data-dir)")
    wanted = ["train", "val"] if split == "all" else [split]
    if name in ("imagefolder", "imagenet"):
        return check_image_folder(name, root, wanted, workers, progress)
    test_names = ["test" if s == "val" else s for s in wanted]  # event data and CIFAR call val "test"
    if is_event_dataset(name):
        return check_event_dataset(name, root, test_names, workers, progress)
    return check_cifar(name, root, test_names)


def format_report(report: DataReport, all_classes: bool = False, max_classes: int = 40) -> list[str]:
    """The report as lines of text; the last line says clean or lists the kinds of problems."""
    lines = [f"{report.dataset} {report.root or ''}".rstrip()]
    if report.note:
        lines.append(report.note)
    for s in report.splits:
        bad = f", {len(s.bad)} bad" if s.bad else ""
        lines.append(f"  {s.split:5s} {s.folder}: {s.files} files, {len(s.counts)} classes{bad}")
    classes = list(dict.fromkeys(c for s in report.splits for c in s.counts))
    if classes and (all_classes or len(classes) <= max_classes):
        width = max(12, *(len(c) for c in classes))
        lines.append(f"  {'class':{width}s}" + "".join(f" {s.split:>8s}" for s in report.splits))
        for c in classes:
            cells = "".join(f" {s.counts[c]:8d}" if c in s.counts else f" {'-':>8s}" for s in report.splits)
            lines.append(f"  {c:{width}s}{cells}")
    elif classes:
        for s in report.splits:
            lo = min(s.counts, key=s.counts.__getitem__)
            hi = max(s.counts, key=s.counts.__getitem__)
            lines.append(f"  {s.split}: {s.counts[lo]} to {s.counts[hi]} files per class (fewest: {lo}, most: "
                         f"{hi}; --all-classes prints every class)")
    if report.bad:
        lines.append(f"bad files ({len(report.bad)}):")
        lines += [f"  {b}" for b in report.bad]
    if report.only_train or report.only_val:
        from .images import mismatch_text

        train, val = (Path(report.root or "") / s for s in ("train", "val"))
        lines.append(f"class folders differ between {train} and {val}: "
                     f"{mismatch_text(report.only_train, report.only_val)}")
    for s in report.splits:
        if s.empty:
            lines.append(f"empty class folders in {s.folder} (ImageFolder refuses them): {', '.join(s.empty)}")
    files = sum(s.files for s in report.splits)
    problems = report.problems
    if not report.splits:
        lines.append(f"check-data {report.dataset}: nothing to check")
    else:
        lines.append(f"check-data {report.dataset}: " + ("; ".join(problems) if problems
                                                          else f"clean, {files} files read"))
    return lines


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.epilog = EXIT_HELP
    p.add_argument("--dataset", required=True, help="dataset name, as for train (imagefolder, imagenet, cifar10, "
                                                    "cifar100, cifar10dvs, dvsgesture, ncaltech101, nmnist)")
    p.add_argument("--data-dir", help="dataset root folder")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that read files (default: every CPU core; 0: read in this process)")
    p.add_argument("--split", choices=["train", "val", "all"], default="all",
                   help="which split to read (val is the test split of event datasets and CIFAR); default all")
    p.add_argument("--all-classes", action="store_true", help="print the count of every class, however many")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("check-data", "read every file of a dataset in parallel and report bad files, class counts per split "
                       "and class folders that differ between train and val (exit 0 clean, 1 problems found, "
                       "2 usage error)", _check_data_args)
def _check_data(args: argparse.Namespace) -> int:
    report = check_data(args.dataset, args.data_dir, args.split, args.workers, not args.no_progress)
    print("\n".join(format_report(report, args.all_classes)))
    return 1 if report.problems else 0
