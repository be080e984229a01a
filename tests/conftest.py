"""Shared test set-up: headless Qt, few threads, and small helpers."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest

from land_core.volume import Volume


@pytest.fixture
def ct_volume() -> Volume:
    """A small anisotropic, rotated CT-like volume with distinct values everywhere."""
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(12, 20, 24)).astype(np.int16)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    return Volume(arr, (0.7, 0.8, 2.5), (-10.0, 20.0, 30.0), direction)
