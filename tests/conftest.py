"""Fixtures only; shared helpers are in helpers.py."""

import dataclasses
import itertools
import os

import pytest
import torch

from dssd_d2.data.digits import DIGITS_SPLITS
from dssd_d2.engine import time_budget


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of small models: they run fastest on one thread, and on
    a busy 2-core machine two OpenMP threads wait on each other (a 0.1 s training step can take
    20 s). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def datasets_root():
    """``$DETECTRON2_DATASETS``, where data-dependent tests find real datasets; they skip when
    it is unset or not a folder."""
    root = os.getenv("DETECTRON2_DATASETS")
    if not root or not os.path.isdir(os.path.expanduser(root)):
        pytest.skip(f"DETECTRON2_DATASETS is unset or not a folder ({root!r})")
    return os.path.expanduser(root)


@pytest.fixture
def bccd_root(datasets_root):
    root = os.path.join(datasets_root, "BCCD")
    if not os.path.isdir(root):
        pytest.skip(f"BCCD not found at {root}")
    return root


@pytest.fixture
def small_digits(monkeypatch):
    """Both digits splits at 24 images, so that generation takes a fraction of a second; for
    datasets the test registers with ``register_digits``."""
    for name, split in DIGITS_SPLITS.items():
        monkeypatch.setitem(DIGITS_SPLITS, name, dataclasses.replace(split, num_images=24))


@pytest.fixture
def fake_clock(monkeypatch):
    """Training steps of 30 seconds each for the time budget (SOLVER.MAX_TRAINING_MINUTES): the
    clock reads perf_counter before and after each step, and each read advances 30 s."""
    ticks = itertools.count()

    class FakeTime:
        @staticmethod
        def perf_counter():
            return next(ticks) * 30.0

    monkeypatch.setattr(time_budget, "time", FakeTime)
