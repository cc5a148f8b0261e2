"""Image-level metrics of a run recomputed from its per-image prediction records with scikit-learn, so that a test
checks the figure itself (not only that it lies in [0, 1]). One place for the record's keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from monai_ultraad.constants import CLASS_NAMES


def assert_image_metrics_match_records(metrics: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
    """``image_auroc``, ``cls_auroc_macro``, ``accuracy`` and ``balanced_accuracy`` of ``metrics`` equal scikit-learn's
    on the records' labels, anomaly scores and class probabilities (metrics that are undefined for the records, e.g.
    one class only, must be None or nan)."""
    labels = np.array([CLASS_NAMES.index(p["label"]) for p in predictions])
    scores = np.array([p["anomaly_score"] for p in predictions], dtype=np.float64)
    probs = np.array([[p["probabilities"][c] for c in CLASS_NAMES] for p in predictions], dtype=np.float64)
    abnormal = (labels != 0).astype(int)
    assert len(predictions) > 0
    if 0 < abnormal.sum() < len(abnormal):
        assert metrics["image_auroc"] == pytest.approx(roc_auc_score(abnormal, scores), abs=1e-9)
    else:
        assert metrics["image_auroc"] is None or np.isnan(metrics["image_auroc"])
    if len(set(labels.tolist())) == len(CLASS_NAMES):
        expected = roc_auc_score(labels, probs / probs.sum(1, keepdims=True), multi_class="ovr", average="macro")
        assert metrics["cls_auroc_macro"] == pytest.approx(expected, abs=1e-6)
    predicted = probs.argmax(1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-9)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted), abs=1e-9)


def assert_benign_malignant_auroc_matches_records(metrics: Mapping[str, Any],
                                                 predictions: Sequence[Mapping[str, Any]]) -> None:
    """``benign_malignant_auroc`` equals scikit-learn's on the abnormal records, scored P(m) / (P(b) + P(m))."""
    abnormal = [p for p in predictions if p["label"] != "normal"]
    truth = np.array([p["label"] == "malignant" for p in abnormal], dtype=int)
    score = np.array([p["probabilities"]["malignant"] / (p["probabilities"]["benign"] + p["probabilities"]["malignant"])
                      for p in abnormal])
    assert 0 < truth.sum() < len(truth)
    assert metrics["benign_malignant_auroc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-6)
