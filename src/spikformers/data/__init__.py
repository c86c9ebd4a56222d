"""Datasets: ``create_dataset(name, root, split, **opts)`` for every dataset the trainer can use.

Static images (``images.py``): ``digits`` and ``mnist5k`` (bundled), ``cifar10``, ``cifar100``, ``imagenet``,
``imagefolder``.
Event data (``events/``): ``cifar10dvs``, ``dvsgesture``, ``ncaltech101``, ``nmnist`` as ``[T, 2, H, W]`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input channels, image size, native T (events)."""

    num_classes: int
    in_chans: int
    img_size: int
    T: int | None = None


STATIC: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, 16),
    "mnist5k": DatasetInfo(10, 1, 28),
    "cifar10": DatasetInfo(10, 3, 32),
    "cifar100": DatasetInfo(100, 3, 32),
    "imagenet": DatasetInfo(1000, 3, 224),
}


def dataset_info(name: str, root: str | Path | None = None, **opts: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset name (``imagefolder`` counts the class folders under ``root``)."""
    if name in STATIC:
        info = STATIC[name]
        if "img_size" in opts and opts["img_size"]:
            info = DatasetInfo(info.num_classes, info.in_chans, int(opts["img_size"]), info.T)
        if name in BUNDLED and opts.get("in_chans"):  # gray images repeated, for models of colour input
            info = DatasetInfo(info.num_classes, int(opts["in_chans"]), info.img_size, info.T)
        return info
    if name == "imagefolder":
        if root is None:
            raise ValueError("dataset 'imagefolder' needs a root folder (--data-dir)")
        if not (Path(root) / "train").is_dir():
            raise FileNotFoundError(f"dataset 'imagefolder': no folder {Path(root) / 'train'}; expected an ImageFolder "
                                    f"tree {root}/train/<class>/<image> and {root}/val/<class>/<image>")
        classes = [p for p in (Path(root) / "train").iterdir() if p.is_dir()]
        return DatasetInfo(len(classes), 3, int(opts.get("img_size") or 224))
    from .events import EVENT_DATASETS

    if name in EVENT_DATASETS:
        return DatasetInfo(EVENT_DATASETS[name]["num_classes"], 2, event_img_size(name, opts.get("img_size")),
                           opts.get("T"))
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(list_datasets())}")


def is_event_dataset(name: str) -> bool:
    """Whether ``name`` is an event-camera dataset (frames ``[T, 2, H, W]``, takes ``T``)."""
    from .events import EVENT_DATASETS

    return name in EVENT_DATASETS


def list_datasets() -> list[str]:
    """Every dataset name :func:`create_dataset` accepts."""
    names = [*STATIC, "imagefolder"]
    try:
        from .events import EVENT_DATASETS

        names += list(EVENT_DATASETS)
    except ImportError:  # pragma: no cover - event layer always ships
        pass
    return names


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", **opts: Any) -> Dataset:
    """Build a dataset yielding ``(x, label)``: images ``[C, H, W]`` or event frames ``[T, 2, H, W]``.

    ``split`` is ``"train"`` or ``"test"``; ``opts`` are the dataset's own options (``img_size``, ``download``,
    ``auto_augment``, ``T``, ``split_by``, ...). ``skip_bad_images`` applies to ImageFolder trees (``imagenet``,
    ``imagefolder``) and is ignored by the others, whose files are read whole when the dataset is built.
    """
    skip_bad_images = bool(opts.pop("skip_bad_images", False))
    if name in BUNDLED:
        size = int(opts.get("img_size") or STATIC[name].img_size)
        return BundledImages(name, split, img_size=size, augment=opts.get("augment", split == "train"),
                             in_chans=int(opts.get("in_chans") or 1))
    if name in ("cifar10", "cifar100"):
        return cifar(name, _need_root(name, root), split, **opts)
    if name in ("imagenet", "imagefolder"):
        return image_folder(_need_root(name, root), split, skip_bad_images=skip_bad_images, **opts)
    from .events import EVENT_DATASETS, create_event_dataset

    if name in EVENT_DATASETS:
        size = event_img_size(name, opts.pop("img_size", None))
        if (size, size) != tuple(EVENT_DATASETS[name]["size"]):
            opts.setdefault("size", (size, size))
        return create_event_dataset(name, _need_root(name, root), split, **opts)
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(list_datasets())}")


# Square model input for event data: the native sensor size, except N-Caltech101 (180 x 240), which the
# papers resize to 128 x 128.
EVENT_IMG_SIZE = {"ncaltech101": 128}


def event_img_size(name: str, img_size: int | None) -> int:
    """The square frame size an event dataset is fed to a model at (``img_size`` if given)."""
    from .events import EVENT_DATASETS

    if img_size:
        return int(img_size)
    return EVENT_IMG_SIZE.get(name, EVENT_DATASETS[name]["size"][0])


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs its root folder: pass --data-dir DIR (or data.root in a config)")
    return Path(root)


from .images import BUNDLED, BundledImages, Digits, cifar, image_folder  # noqa: E402

__all__ = ["DatasetInfo", "create_dataset", "dataset_info", "list_datasets", "is_event_dataset", "BundledImages",
           "Digits", "cifar", "image_folder"]
