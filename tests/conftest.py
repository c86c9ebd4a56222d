"""Shared fixtures: real digits images, and where the real event recordings are looked for.

The recordings (tonic's public test fixtures, docs/data.md "Real recordings in the tests") are not part of the
repository; the tests that read them skip when they are absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """32 real digits images, 1 x 16 x 16, normalised, with labels."""
    from spikformers.data import Digits

    d = Digits("test", img_size=16)
    return d.tensors[0][:32].clone(), d.tensors[1][:32].clone()


@pytest.fixture(autouse=True, scope="session")
def fixed_calibration():  # type: ignore[no-untyped-def]
    """Event-driven vs dense by the fixed thresholds, not by timed trials: the same paths on every machine and run
    (tests/test_calibration.py turns calibration on, with a fake timer)."""
    from spikformers.kernels import set_kernel_config

    previous = set_kernel_config(calibrate=False)
    yield
    set_kernel_config(previous)


@pytest.fixture(autouse=True, scope="session")
def one_thread():  # type: ignore[no-untyped-def]
    """The suite's models are small: one intra-op thread is fastest for them and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
