"""Shared fixtures: a tiny randomly initialised open_clip backbone, and the real data folders.

Real-data tests carry the ``realdata`` marker. A user without ../shared/data sees them skipped with the reason;
under CI (``CI=true``) a missing data folder is a failure, because there they must run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from monai_ultraad.networks import TINY_BACKBONE, ClipBackbone

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _data_dir() -> Path | None:
    from monai_ultraad.data import default_data_dir

    return default_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_dir()
    if root is None or not (root / "bus_uclm" / "labels.csv").exists():
        msg = "real data not found: set ULTRAAD_DATA_DIR or place shared/data beside the project"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (required under CI)")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    """A 4-block, 64 px CLIP with random weights (seeded): fast enough for every unit test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(TINY_BACKBONE, None, feature_layers=(1, 2, 3, 4), allow_random_init=True, init_seed=0)
