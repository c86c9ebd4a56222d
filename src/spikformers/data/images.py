"""Static image datasets: the bundled digits, CIFAR-10/100, ImageNet and any ImageFolder tree.

Augmentation pipelines come from timm (RandAugment strings, random erasing); nothing is rewritten by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3796  # of load_digits() / 16 over all pixels
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 digits, as a fixed stratified 80/20 split (``seed`` fixes it, default 0).

    Returns images ``[N, 1, 8, 8]`` float32 in [0, 1] and labels ``[N]`` int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    if split == "train":
        return x_tr, y_tr
    if split in ("test", "val"):
        return x_te, y_te
    raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")


class Digits(TensorDataset):
    """The bundled digits as a tensor dataset of ``([1, img_size, img_size], label)``, normalised.

    ``img_size`` > 8 upsamples bilinearly once, up front. ``augment`` adds random shifts of up to one pixel
    (of the 8x8 grid) for the training split.
    """

    def __init__(self, split: str = "train", img_size: int = 16, augment: bool = False, seed: int = 0) -> None:
        x, y = digits_split(split, seed)
        images = torch.from_numpy(x)
        if img_size != 8:
            images = torch.nn.functional.interpolate(images, size=img_size, mode="bilinear", align_corners=False)
        images = (images - DIGITS_MEAN) / DIGITS_STD
        super().__init__(images, torch.from_numpy(y))
        self.augment = augment
        self.shift = max(1, img_size // 8)
        self.classes = [str(i) for i in range(10)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        if self.augment:
            dx, dy = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, y


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
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name}: no dataset under {Path(root) / folder}. Expected torchvision's layout "
            f"({folder}/ with the python pickles); pass --download to fetch it once, "
            f"or unpack the archive from https://www.cs.toronto.edu/~kriz/cifar.html there. ({e})"
        ) from None


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
