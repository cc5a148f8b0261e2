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


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skipped ``realdata`` test is a failure: there the real data must be present and used."""
    outcome = yield
    report = outcome.get_result()
    expected_failure = hasattr(report, "wasxfail")  # an xfail is reported as skipped, but it did run
    if report.skipped and not expected_failure and item.get_closest_marker("realdata") is not None and _under_ci():
        report.outcome = "failed"
        report.longrepr = f"realdata test {item.nodeid} was skipped under CI=true: {report.longrepr}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_dir()
    if root is None or not (root / "bus_uclm" / "labels.csv").exists():
        msg = "real data not found: set ULTRAAD_DATA_DIR or place shared/data beside the project"
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    """A 4-block, 64 px CLIP with random weights (seeded): fast enough for every unit test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(TINY_BACKBONE, None, feature_layers=(1, 2, 3, 4), allow_random_init=True, init_seed=0)


def make_synthetic_dataset(root: Path, patients_per_class: int = 4, images_per_patient: int = 2, seed: int = 0) -> Path:
    """A small labels.csv dataset: speckle-like noise, round dark lesions (benign), irregular ones (malignant)."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    for label in ("normal", "benign", "malignant"):
        for p in range(patients_per_class):
            patient = f"{label[:3].upper()}{p}"
            for i in range(images_per_patient):
                h, w = 60, 80
                img = rng.gamma(2.0, 40.0, size=(h, w)).clip(0, 255)
                mask = np.zeros((h, w), np.uint8)
                if label != "normal":
                    yy, xx = np.mgrid[:h, :w]
                    cy, cx, r = rng.integers(20, 40), rng.integers(25, 55), rng.integers(7, 12)
                    dist = np.hypot(yy - cy, xx - cx)
                    if label == "malignant":
                        dist = dist + 4 * np.sin(np.arctan2(yy - cy, xx - cx) * 7)
                    mask[dist < r] = 255
                    img[mask > 0] *= 0.25
                name = f"{patient}_{i:02d}"
                Image.fromarray(img.astype(np.uint8)).convert("RGB").save(root / "images" / f"{name}.png")
                Image.fromarray(mask).save(root / "masks" / f"{name}.png")
                rows.append({"image": f"images/{name}.png", "mask": f"masks/{name}.png", "label": label, "patient": patient})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"))
