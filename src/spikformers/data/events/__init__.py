"""Event-camera data: file readers, event-to-frame conversion, an on-disk frame cache and datasets.

Readers and frames are numpy-only; the torch dataset classes (``CIFAR10DVS``, ``DVSGesture``,
``NCaltech101``, ``NMNIST``, ``create_event_dataset``) are imported on first use.
"""

from .cache import CacheTask, FrameCache, build_frame_cache
from .frames import events_to_frames
from .readers import (
    EVENT_DTYPE,
    EventFileError,
    read_aedat2,
    read_aedat3,
    read_aedat4,
    read_atis_bin,
    read_events,
    read_gesture_labels,
    split_gesture_recording,
)

_DATASET_NAMES = ("CIFAR10DVS", "DVSGesture", "NCaltech101", "NMNIST", "create_event_dataset", "EVENT_DATASETS")

__all__ = [
    "EVENT_DTYPE",
    "EventFileError",
    "CacheTask",
    "FrameCache",
    "build_frame_cache",
    "events_to_frames",
    "read_aedat2",
    "read_aedat3",
    "read_aedat4",
    "read_atis_bin",
    "read_events",
    "read_gesture_labels",
    "split_gesture_recording",
    *_DATASET_NAMES,
]


def __getattr__(name: str):
    """Import the torch dataset classes lazily, so that the readers stay importable without torch."""
    if name in _DATASET_NAMES:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
