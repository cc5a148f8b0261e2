"""What is chosen on the validation images, and how: the best epoch, the heatmap threshold, the calibration data.

One place for these rules, used by :func:`monai_ultraad.engine.fit` (CLI, MONAI Label, benchmarks), by the bundle's
MONAI handlers (:mod:`monai_ultraad.workflows.handlers`) and by the benchmark protocol for every method:

* the best epoch maximises the mean of the validation image AUROC, 3-class AUROC and pixel AUROC (nan ignored); the
  first epoch with the highest score wins; without any usable score the last epoch is kept, and a note says so;
* the heatmap threshold maximises Dice over the validation images (0.5, with a note, when they hold no lesion);
* the test set is never seen by any of them.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_ultraad.metrics import best_threshold

logger = logging.getLogger(__name__)

#: Validation metrics averaged (nan ignored) to pick the best epoch.
SELECTION_METRICS = ("image_auroc", "cls_auroc_macro", "pixel_auroc")
#: The threshold used when the validation images cannot choose one.
DEFAULT_THRESHOLD = 0.5


def selection_score(metrics: Mapping[str, Any]) -> float:
    """Mean of the :data:`SELECTION_METRICS` present and not nan (nan when none is)."""
    vals = [metrics.get(k) for k in SELECTION_METRICS]
    vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


class BestEpoch:
    """Keeps a copy of the head weights of the epoch with the best validation :func:`selection_score`.

    ``update`` after each validated epoch; ``restore`` after training loads the kept weights into the model (or keeps
    the last epoch when no epoch had a usable score) and returns the chosen epoch with its notes.
    """

    def __init__(self) -> None:
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, Any] = {}

    def update(self, epoch: int, metrics: Mapping[str, Any], model: torch.nn.Module) -> float:
        """Record ``epoch`` if its validation ``metrics`` score higher than every earlier epoch; returns its score."""
        score = selection_score(metrics)
        if not math.isnan(score) and score > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score, int(epoch), dict(metrics)
            self.best_state = copy.deepcopy(_unwrap(model).head_state_dict())
            logger.info("new best validation score %.4f at epoch %d", score, epoch)
        return score

    def restore(self, model: torch.nn.Module, last_epoch: int) -> tuple[int, list[str]]:
        """Load the best epoch's head into ``model``; returns (chosen epoch, notes)."""
        model = _unwrap(model)
        if self.best_state is None:  # no usable validation: keep the last epoch, and say so
            return int(last_epoch), ["no validation metric available: the last epoch was kept"]
        device = next(model.parameters()).device
        model.load_head_state_dict(self.best_state)
        model.to(device)
        return self.best_epoch, []


def validation_threshold(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> tuple[float, list[str]]:
    """The heatmap threshold maximising Dice on the VALIDATION ``maps`` against their ``masks``, with its notes."""
    if not maps:
        return DEFAULT_THRESHOLD, [f"no validation images: heatmap threshold left at {DEFAULT_THRESHOLD}"]
    if not any(m is not None and m.any() for m in masks):
        return DEFAULT_THRESHOLD, [f"no lesion in the validation images: heatmap threshold left at {DEFAULT_THRESHOLD}"]
    return float(best_threshold(maps, masks)), []


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


__all__ = ["DEFAULT_THRESHOLD", "SELECTION_METRICS", "BestEpoch", "selection_score", "validation_threshold"]
