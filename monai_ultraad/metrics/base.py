"""Input checks shared by the metrics (numpy / torch / lists in, validated numpy out) and the metric base class."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from monai_ultraad.arrays import as_numpy

ArrayLike = Any  # numpy array, torch tensor, list or scalar





def warn_nan(message: str) -> float:
    warnings.warn(message, UserWarning, stacklevel=3)
    return float("nan")


def as_scores(x: ArrayLike, name: str) -> np.ndarray:
    arr = as_numpy(x, np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def as_labels(x: ArrayLike, name: str, num_classes: int | None = None) -> np.ndarray:
    arr = as_numpy(x).reshape(-1)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must hold integer class indices, got values like {arr[:5]}")
    arr = arr.astype(np.int64)
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got range [{arr.min()}, {arr.max()}]")
    return arr


def as_probs(x: ArrayLike, name: str) -> np.ndarray:
    arr = as_numpy(x, np.float64)
    if arr.ndim == 1:  # a single sample
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def map_and_mask(anomaly_map: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image's map and mask; return a clipped float map and a boolean mask (H, W).

    ``(1, H, W)`` and ``(H, W)`` are both accepted (and may be mixed) but anything with more than
    one image raises: the per-image metrics would otherwise silently treat a batch as one image.
    """
    m = as_numpy(anomaly_map, np.float64)
    g = as_numpy(mask)
    m2 = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    g2 = g[0] if g.ndim == 3 and g.shape[0] == 1 else g
    if m2.shape != g2.shape:
        raise ValueError(f"anomaly map shape {m.shape} does not match mask shape {g.shape}")
    if m2.ndim != 2:
        raise ValueError(f"expected one image of shape (H, W) or (1, H, W), got map shape {m.shape}")
    if not np.all(np.isfinite(m2)):
        raise ValueError("anomaly map contains NaN or infinite values")
    return np.clip(m2, 0.0, 1.0), g2 > 0.5


class Metric:
    """Common ``reset`` on construction; subclasses implement ``update`` / ``compute``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


