"""Shared fixture of the training tests: a tiny phantom dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from land_core.data.phantom import PhantomConfig, write_phantom_dataset


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    """Three 32^3 phantoms at 8 mm (about a second to make)."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n=3, seed=0, config=PhantomConfig(size=32, spacing=8.0), progress=False)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Train in-process on one thread (as the subprocess runs do): tiny models gain nothing from more,
    and two OpenMP threads on a shared 2-core machine can stall each other badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
