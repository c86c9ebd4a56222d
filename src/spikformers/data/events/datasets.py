"""Torch datasets over the neuromorphic datasets in their published on-disk layouts (docs/data.md).

Each dataset yields ``(frames [T, 2, H, W] float32, int label)``. Frames are built once per (T, split mode)
into an on-disk cache (``cache.py``) in parallel, so an epoch reads ``.npy`` frames, not raw events.
Splits are explicit and named, because accuracies on different splits are not comparable.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .cache import CacheTask, FrameCache, build_frame_cache
from .frames import SPLIT_MODES, events_to_frames
from .readers import read_aedat2, read_aedat3, read_aedat4, read_atis_bin, read_gesture_labels

__all__ = [
    "EVENT_DATASETS",
    "CIFAR10DVS",
    "DVSGesture",
    "NCaltech101",
    "NMNIST",
    "EventFrameDataset",
    "DVSAugment",
    "create_event_dataset",
    "random_hflip",
    "random_translate",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

EVENT_DATASETS: dict[str, dict] = {
    "cifar10dvs": dict(num_classes=10, in_chans=2, size=(128, 128), splits=("train", "test"),
                       split_rules=("per_class_90_10", "random", "first_100_test")),
    "dvsgesture": dict(num_classes=11, in_chans=2, size=(128, 128), splits=("train", "test"),
                       split_rules=("official",)),
    "ncaltech101": dict(num_classes=101, in_chans=2, size=(180, 240), splits=("train", "test"),
                        split_rules=("per_class_90_10", "random")),
    "nmnist": dict(num_classes=10, in_chans=2, size=(34, 34), splits=("train", "test"),
                   split_rules=("official",)),
}
"""What a trainer needs to know per dataset: classes, input channels, native sensor size (H, W), split rules."""


# --------------------------------------------------------------------------- augmentation (torch, on frames)

def random_hflip(frames: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip all T frames left-right together with probability ``p``."""
    if p > 0 and torch.rand((), generator=generator).item() < p:
        return frames.flip(-1)
    return frames


def shift_frames(frames: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate frames by (dy, dx) pixels, filling the uncovered border with zeros (no wrap-around)."""
    h, w = frames.shape[-2:]
    if dy == 0 and dx == 0:
        return frames
    out = torch.zeros_like(frames)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        frames[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def random_translate(frames: torch.Tensor, max_shift: float = 0.1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift all T frames by one random integer offset, up to ``max_shift`` x (H, W) pixels each way.

    ``max_shift`` below 1 is a fraction of the frame size; 1 or more is a number of pixels.
    """
    h, w = frames.shape[-2:]
    my, mx = (int(max_shift * h), int(max_shift * w)) if max_shift < 1 else (int(max_shift), int(max_shift))
    dy = int(torch.randint(-my, my + 1, (), generator=generator)) if my else 0
    dx = int(torch.randint(-mx, mx + 1, (), generator=generator)) if mx else 0
    return shift_frames(frames, dy, dx)


class DVSAugment:
    """Training augmentation for DVS frames ``[T, 2, H, W]``: random horizontal flip, then random translation.

    The same flip and shift apply to every time step and both polarities (the published DVS augmentation,
    docs/recipes.md "Spikformer CIFAR10-DVS").
    """

    def __init__(self, flip_p: float = 0.5, max_shift: float = 0.1):
        self.flip_p, self.max_shift = flip_p, max_shift

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return random_translate(random_hflip(frames, self.flip_p), self.max_shift)

    def __repr__(self) -> str:
        return f"DVSAugment(flip_p={self.flip_p}, max_shift={self.max_shift})"


# --------------------------------------------------------------------------- download helpers

class DownloadError(RuntimeError, FileNotFoundError):
    """A dataset could not be downloaded (no network, a corrupt archive, no download offered); the message names
    the URL and where to place the files by hand. Also a FileNotFoundError: the dataset is not there."""


@dataclass(frozen=True)
class Resource:
    """An archive to download into the dataset root; ``inner`` names archives inside it to extract too."""

    url: str
    filename: str
    md5: str | None
    inner: tuple[str, ...] = ()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` through a temporary file (http(s) or file:// URLs)."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:  # noqa: S310 - fixed URLs
            shutil.copyfileobj(response, f, 1 << 20)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _extract(archive: Path, dest: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    else:
        raise RuntimeError(f"{archive}: not a zip or tar archive")


def download_and_extract(resources: tuple[Resource, ...], root: Path) -> None:
    """Fetch each archive into ``root`` unless present with the right md5, then extract it (and inner archives)."""
    root.mkdir(parents=True, exist_ok=True)
    for res in resources:
        archive = root / res.filename
        if not archive.is_file() or (res.md5 and _md5(archive) != res.md5):
            try:
                _fetch(res.url, archive)
            except OSError as e:  # no network (URLError), refused connection, full disk ...
                raise DownloadError(f"could not download {res.url} ({getattr(e, 'reason', None) or e}); "
                                    f"place {res.filename} in {root} by hand to have it unpacked") from None
            if res.md5 and _md5(archive) != res.md5:
                raise DownloadError(f"{archive}: md5 {_md5(archive)} does not match the expected {res.md5}; "
                                   f"the download from {res.url} is corrupt, delete it and retry")
        _extract(archive, root)
        for name in res.inner:
            found = sorted(root.rglob(name))
            if not found:
                raise RuntimeError(f"{archive}: expected an inner archive {name!r} after extraction")
            _extract(found[0], root)


# --------------------------------------------------------------------------- base dataset

@dataclass(frozen=True)
class EventSample:
    """One sample: the file it comes from, its label, its cache key, and an optional time window [start, end)."""

    source: str
    label: int
    key: str
    window: tuple[int, int] | None = None


class EventFrameDataset(Dataset):
    """Base class: a list of event samples turned into cached ``[T, 2, H, W]`` float32 frames.

    Options shared by all datasets: ``T`` (time steps), ``split_by`` ("number" | "time", see
    ``frames.slice_indices``), ``size`` (output (H, W) or int; frames are resized with F.interpolate,
    ``resize_mode``), ``augment`` (None = on for the train split: flip + translation, see DVSAugment),
    ``cache`` (build frames once on disk; False converts on every access), ``cache_dir`` (default
    ``<root>/frames_cache``), ``workers`` (processes for the cache build), ``progress`` (tqdm bar),
    ``transform`` (applied last to the frame tensor), ``download``.
    """

    name = ""
    native_size: tuple[int, int] = (0, 0)
    layout_help = ""
    resources: tuple[Resource, ...] = ()

    def __init__(self, root: str | os.PathLike, split: str = "train", T: int = 16, split_by: str = "number",
                 size: int | tuple[int, int] | None = None, augment: bool | Callable | None = None,
                 cache: bool = True, cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                 progress: bool = True, transform: Callable | None = None, download: bool = False,
                 resize_mode: str = "bilinear", flip_p: float = 0.5, max_shift: float = 0.1):
        if split not in ("train", "test"):
            raise ValueError(f"{type(self).__name__}: split must be 'train' or 'test', got {split!r}")
        if split_by not in SPLIT_MODES:
            raise ValueError(f"{type(self).__name__}: split_by must be one of {SPLIT_MODES}, got {split_by!r}")
        if T < 1:
            raise ValueError(f"{type(self).__name__}: T must be >= 1, got {T}")
        self.root = Path(root).expanduser()
        self.split, self.T, self.split_by = split, int(T), split_by
        if isinstance(size, int):
            size = (size, size)
        self.size = tuple(size) if size is not None else self.native_size
        self.resize_mode = resize_mode
        if augment is None:
            augment = split == "train"
        self.augment = DVSAugment(flip_p, max_shift) if augment is True else (augment or None)
        self.transform = transform
        if download:
            self.download()
        self._check_layout()
        self.samples: list[EventSample] = self._find_samples()
        self.targets = [s.label for s in self.samples]
        self.cache: FrameCache | None = None
        if cache:
            self.cache = FrameCache(cache_dir if cache_dir is not None else self.root / "frames_cache",
                                    self.name, self.T, self.split_by, self.native_size, self._reader_options())
            build_frame_cache(self.cache, self._tasks(), workers=workers, progress=progress,
                              desc=f"{self.name} {split}: events -> T={self.T} frames")

    # --- per-dataset hooks
    def _expected_dirs(self) -> list[Path]:
        raise NotImplementedError

    def _find_samples(self) -> list[EventSample]:
        raise NotImplementedError

    def _reader_options(self) -> dict:
        return {}

    def _reader(self) -> tuple[Callable[..., np.ndarray], dict]:
        raise NotImplementedError

    # --- shared machinery
    def download(self) -> None:
        """Download and extract the dataset archives into ``root`` (skipped for archives already present)."""
        if not self.resources:
            raise DownloadError(f"{type(self).__name__} cannot be downloaded automatically.\n"
                                f"{self.layout_help.format(root=self.root)}")
        try:
            download_and_extract(self.resources, self.root)
        except DownloadError as e:
            layout = "\n".join("  " + line for line in self.layout_help.format(root=self.root).splitlines())
            raise DownloadError(f"{type(self).__name__}: {e}\n{layout}") from None

    def _check_layout(self) -> None:
        missing = [d for d in self._expected_dirs() if not d.is_dir()]
        if missing:
            what = (f"dataset root {self.root} does not exist" if missing[0] == self.root
                    else f"folder {missing[0]} not found under root {self.root}")
            raise FileNotFoundError(f"{type(self).__name__}: {what}.\n{self.layout_help.format(root=self.root)}")

    def _tasks(self) -> list[CacheTask]:
        reader, kwargs = self._reader()
        by_source: dict[str, CacheTask] = {}
        for s in self.samples:
            task = by_source.get(s.source)
            if task is None:
                task = by_source[s.source] = CacheTask(s.source, reader, [], dict(kwargs),
                                                       [] if s.window is not None else None)
            task.keys.append(s.key)
            if s.window is not None:
                task.windows.append(s.window)
        return list(by_source.values())

    def events(self, index: int) -> np.ndarray:
        """The raw events of sample ``index`` (as the reader returns them, cut to the sample's window)."""
        s = self.samples[index]
        reader, kwargs = self._reader()
        ev = reader(s.source, **kwargs)
        if s.window is not None:
            ev = ev[(ev["t"] >= s.window[0]) & (ev["t"] < s.window[1])]
        return ev

    def frames(self, index: int) -> np.ndarray:
        """Integer count frames ``[T, 2, H, W]`` at native size (from the cache when enabled)."""
        if self.cache is not None:
            key = self.samples[index].key
            try:
                return self.cache.load(key)
            except (OSError, ValueError):  # missing or damaged cache file: rebuild this one
                frames = events_to_frames(self.events(index), self.T, self.native_size, self.split_by, np.int64)
                self.cache.save(key, frames)
                return frames
        return events_to_frames(self.events(index), self.T, self.native_size, self.split_by, np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.frames(index).astype(np.float32))
        if tuple(x.shape[-2:]) != tuple(self.size):
            kw = {"align_corners": False} if self.resize_mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=self.size, mode=self.resize_mode, **kw)
        if self.augment is not None:
            x = self.augment(x)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[index].label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, T={self.T}, "
                f"split_by={self.split_by!r}, size={self.size}, augment={self.augment})")


def _key(path: Path, base: Path) -> str:
    """Cache key of a file: its path below ``base`` without suffix, '/' replaced by '__'."""
    return "__".join(path.relative_to(base).with_suffix("").parts)


def _split_per_class(files: list[Path], split: str, rule: str, rules: tuple[str, ...], seed: int,
                     train_ratio: float, owner: str) -> list[Path]:
    """Select one class's files (sorted) for ``split`` by a named rule."""
    n = len(files)
    if rule == "per_class_90_10":
        n_train = math.ceil(0.9 * n)
        chosen = range(n_train) if split == "train" else range(n_train, n)
    elif rule == "random":
        # per-class seeded shuffle; the order seed is mixed with the class folder name so classes differ
        salt = int(hashlib.md5(files[0].parent.name.encode()).hexdigest()[:8], 16) if files else 0
        perm = np.random.default_rng([seed, salt]).permutation(n)
        n_train = math.ceil(train_ratio * n)
        chosen = sorted(perm[:n_train].tolist() if split == "train" else perm[n_train:].tolist())
    elif rule == "first_100_test" and rule in rules:
        chosen = range(100, n) if split == "train" else range(min(100, n))
    else:
        raise ValueError(f"{owner}: unknown split_rule {rule!r}; choose one of {rules}")
    return [files[i] for i in chosen]


# --------------------------------------------------------------------------- CIFAR10-DVS

class CIFAR10DVS(EventFrameDataset):
    """CIFAR10-DVS (Li et al. 2017): 10 000 recordings, 10 classes, 128x128.

    Layout: ``root/<class>/*.aedat`` (original AEDAT 2.0 release, decoded with SpikingJelly's orientation by
    default; ``orientation="raw"`` to keep the bits) or ``root/<class>/*.aedat4`` (newer release used by
    tonic; ``download=True`` fetches it). ``fmt``: "auto" (AEDAT 2 if any .aedat file exists), "aedat" or
    "aedat4". Splits (``split_rule``): "per_class_90_10" (default, Spikformer's: per class in sorted file
    order, first ceil(90%) train, rest test), "random" (per class seeded shuffle, ``train_ratio``, ``seed``),
    "first_100_test" (per class the first 100 sorted files are test).
    """

    name = "cifar10dvs"
    native_size = (128, 128)
    split_rules = EVENT_DATASETS["cifar10dvs"]["split_rules"]
    layout_help = (
        "Expected CIFAR10-DVS in its published layout: {root}/<class>/*.aedat (original AEDAT 2.0 release) or "
        "{root}/<class>/*.aedat4 (AEDAT 4 release), with the 10 class folders " + ", ".join(CIFAR10_CLASSES)
        + ".\nGet it from https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 (original, unzip each "
        "class archive into root) or pass download=True for the AEDAT 4 release "
        "(https://figshare.com/ndownloader/files/38023437)."
    )
    resources = (Resource("https://figshare.com/ndownloader/files/38023437", "CIFAR10DVS.zip",
                          "ce3a4a0682dc0943703bd8f749a7701c", tuple(f"{c}.zip" for c in CIFAR10_CLASSES)),)

    def __init__(self, root: str | os.PathLike, split: str = "train", T: int = 16,
                 split_rule: str = "per_class_90_10", seed: int = 0, train_ratio: float = 0.9, fmt: str = "auto",
                 orientation: str = "spikingjelly", **opts):
        if fmt not in ("auto", "aedat", "aedat4"):
            raise ValueError(f"CIFAR10DVS: fmt must be 'auto', 'aedat' or 'aedat4', got {fmt!r}")
        self.split_rule, self.seed, self.train_ratio = split_rule, seed, train_ratio
        self.fmt, self.orientation = fmt, orientation
        self.classes = list(CIFAR10_CLASSES)
        super().__init__(root, split, T, **opts)

    def _expected_dirs(self) -> list[Path]:
        return [self.root, *(self.root / c for c in CIFAR10_CLASSES)]

    def _find_samples(self) -> list[EventSample]:
        if self.fmt == "auto":
            self.fmt = "aedat" if any(any((self.root / c).glob("*.aedat")) for c in CIFAR10_CLASSES) else "aedat4"
        samples = []
        for label, c in enumerate(CIFAR10_CLASSES):
            files = sorted((self.root / c).glob(f"*.{self.fmt}"))
            if not files:
                raise FileNotFoundError(f"CIFAR10DVS: no *.{self.fmt} files in {self.root / c}.\n"
                                        + self.layout_help.format(root=self.root))
            for f in _split_per_class(files, self.split, self.split_rule, self.split_rules, self.seed,
                                      self.train_ratio, "CIFAR10DVS"):
                samples.append(EventSample(str(f), label, _key(f, self.root)))
        return samples

    def _reader_options(self) -> dict:
        return {"fmt": self.fmt, "orientation": self.orientation if self.fmt == "aedat" else None}

    def _reader(self):
        if self.fmt == "aedat":
            return read_aedat2, {"orientation": self.orientation}
        return read_aedat4, {}


# --------------------------------------------------------------------------- DVS128 Gesture

class DVSGesture(EventFrameDataset):
    """DVS128 Gesture (Amir et al. 2017): 11 gestures, 128x128, official split 1176 train / 288 test samples.

    Layout: ``root/DvsGesture/`` (or root itself) holding ``user*_*.aedat`` (AEDAT 3.1),
    ``user*_*_labels.csv`` and ``trials_to_train.txt`` / ``trials_to_test.txt``. Each labelled interval
    [start, end) of a recording is one sample (classes 1..11 -> labels 0..10).
    """

    name = "dvsgesture"
    native_size = (128, 128)
    layout_help = (
        "Expected DVS128 Gesture in its published layout: {root}/DvsGesture/ containing user*_*.aedat "
        "(AEDAT 3.1), user*_*_labels.csv, trials_to_train.txt and trials_to_test.txt.\nGet DvsGesture.tar.gz "
        "from https://research.ibm.com/interactive/dvsgesture/ and extract it into root "
        "(it cannot be downloaded automatically)."
    )

    def __init__(self, root: str | os.PathLike, split: str = "train", T: int = 16, **opts):
        self.classes = [str(i) for i in range(1, 12)]
        super().__init__(root, split, T, **opts)

    @property
    def folder(self) -> Path:
        """The folder holding the recordings: root/DvsGesture, or root itself if it has the trial lists."""
        if (self.root / "trials_to_train.txt").is_file() and not (self.root / "DvsGesture").is_dir():
            return self.root
        return self.root / "DvsGesture"

    def _expected_dirs(self) -> list[Path]:
        return [self.root, self.folder]

    def _find_samples(self) -> list[EventSample]:
        listing = self.folder / f"trials_to_{self.split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"DVSGesture: {listing} not found.\n" + self.layout_help.format(root=self.root))
        samples = []
        for line in listing.read_text().splitlines():
            name = line.strip()
            if not name:
                continue
            rec = self.folder / name
            labels_csv = rec.with_name(rec.stem + "_labels.csv")
            for f in (rec, labels_csv):
                if not f.is_file():
                    raise FileNotFoundError(f"DVSGesture: {f} (listed in {listing}) not found.\n"
                                            + self.layout_help.format(root=self.root))
            for k, row in enumerate(read_gesture_labels(labels_csv)):
                samples.append(EventSample(str(rec), int(row["label"]), f"{rec.stem}__{k:02d}",
                                           (int(row["start"]), int(row["end"]))))
        return samples

    def _reader(self):
        return read_aedat3, {"size": self.native_size}


# --------------------------------------------------------------------------- N-Caltech101

class NCaltech101(EventFrameDataset):
    """N-Caltech101 (Orchard et al. 2015): ATIS recordings of Caltech101, 101 class folders, up to 240x180.

    Layout (as tonic extracts it): ``root/Caltech101/<class>/*.bin``; labels are class folder indices in
    sorted order. Events keep their sensor coordinates (no per-sample min subtraction, unlike tonic) inside
    a 180x240 frame. Splits (``split_rule``): "per_class_90_10" (default) or "random" (``seed``,
    ``train_ratio``), as for CIFAR10-DVS.
    """

    name = "ncaltech101"
    native_size = (180, 240)
    split_rules = EVENT_DATASETS["ncaltech101"]["split_rules"]
    layout_help = (
        "Expected N-Caltech101 in its published layout: {root}/Caltech101/<class>/*.bin (ATIS .bin files, "
        "one folder per class).\nGet it from https://www.garrickorchard.com/datasets/n-caltech101 (extract "
        "Caltech101.zip into root) or pass download=True."
    )
    resources = (Resource("https://data.mendeley.com/public-files/datasets/cy6cvx3ryv/files/"
                          "36b5c52a-b49d-4853-addb-a836a8883e49/file_downloaded", "N-Caltech101-archive.zip",
                          "66201824eabb0239c7ab992480b50ba3", ("Caltech101.zip",)),)

    def __init__(self, root: str | os.PathLike, split: str = "train", T: int = 16,
                 split_rule: str = "per_class_90_10", seed: int = 0, train_ratio: float = 0.9, **opts):
        self.split_rule, self.seed, self.train_ratio = split_rule, seed, train_ratio
        super().__init__(root, split, T, **opts)

    def _expected_dirs(self) -> list[Path]:
        return [self.root, self.root / "Caltech101"]

    def _find_samples(self) -> list[EventSample]:
        base = self.root / "Caltech101"
        self.classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"NCaltech101: no class folders in {base}.\n"
                                    + self.layout_help.format(root=self.root))
        samples = []
        for label, c in enumerate(self.classes):
            files = sorted((base / c).glob("*.bin"))
            for f in _split_per_class(files, self.split, self.split_rule, self.split_rules, self.seed,
                                      self.train_ratio, "NCaltech101"):
                samples.append(EventSample(str(f), label, _key(f, self.root)))
        return samples

    def _reader(self):
        return read_atis_bin, {"size": self.native_size}


# --------------------------------------------------------------------------- N-MNIST

class NMNIST(EventFrameDataset):
    """N-MNIST (Orchard et al. 2015): ATIS recordings of MNIST, 34x34, official 60 000 / 10 000 split.

    Layout: ``root/Train/<digit>/*.bin`` and ``root/Test/<digit>/*.bin`` (digit folders 0..9).
    """

    name = "nmnist"
    native_size = (34, 34)
    layout_help = (
        "Expected N-MNIST in its published layout: {root}/Train/<digit>/*.bin and {root}/Test/<digit>/*.bin "
        "(digit folders 0..9).\nGet Train.zip and Test.zip from https://www.garrickorchard.com/datasets/n-mnist "
        "and extract them into root, or pass download=True."
    )
    _split_resources = {
        "train": Resource("https://data.mendeley.com/public-files/datasets/468j46mzdv/files/"
                          "39c25547-014b-4137-a934-9d29fa53c7a0/file_downloaded", "train.zip",
                          "20959b8e626244a1b502305a9e6e2031"),
        "test": Resource("https://data.mendeley.com/public-files/datasets/468j46mzdv/files/"
                         "05a4d654-7e03-4c15-bdfa-9bb2bcbea494/file_downloaded", "test.zip",
                         "69ca8762b2fe404d9b9bad1103e97832"),
    }

    def __init__(self, root: str | os.PathLike, split: str = "train", T: int = 16, **opts):
        self.classes = [str(d) for d in range(10)]
        self.resources = (self._split_resources[split],) if split in self._split_resources else ()
        super().__init__(root, split, T, **opts)

    @property
    def folder(self) -> Path:
        """``root/Train`` or ``root/Test``."""
        return self.root / ("Train" if self.split == "train" else "Test")

    def _expected_dirs(self) -> list[Path]:
        return [self.root, self.folder]

    def _find_samples(self) -> list[EventSample]:
        samples = []
        for label in range(10):
            d = self.folder / str(label)
            if not d.is_dir():
                raise FileNotFoundError(f"NMNIST: digit folder {d} not found.\n"
                                        + self.layout_help.format(root=self.root))
            samples += [EventSample(str(f), label, _key(f, self.root)) for f in sorted(d.glob("*.bin"))]
        return samples

    def _reader(self):
        return read_atis_bin, {"size": self.native_size}


# --------------------------------------------------------------------------- factory

_CLASSES: dict[str, type[EventFrameDataset]] = {
    "cifar10dvs": CIFAR10DVS,
    "dvsgesture": DVSGesture,
    "ncaltech101": NCaltech101,
    "nmnist": NMNIST,
}


def create_event_dataset(name: str, root: str | os.PathLike, split: str = "train", T: int = 16,
                         **opts) -> EventFrameDataset:
    """Build an event dataset by name ("cifar10dvs", "dvsgesture", "ncaltech101", "nmnist"; case, '-' and
    '_' ignored), passing ``opts`` to its class (split_by, size, augment, cache_dir, split_rule, ...)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _CLASSES:
        raise ValueError(f"unknown event dataset {name!r}; known: {sorted(_CLASSES)}")
    return _CLASSES[key](root, split=split, T=T, **opts)
