"""Image-level metrics: anomaly AUROC, class AUROC, (balanced) accuracy and expected calibration error (scikit-learn)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from monai_ultraad.arrays import as_numpy
from monai_ultraad.metrics.base import ArrayLike, Metric, as_labels, as_probs, as_scores, warn_nan


class BinaryAUROC(Metric):
    """Area under the ROC curve for binary targets (e.g. normal=0 vs abnormal=1 images).

    ``update(scores, targets)``: higher score = more likely positive. ``compute()`` uses
    :func:`sklearn.metrics.roc_auc_score`; ``nan`` (with a warning) when only one class is present.
    """

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, scores: ArrayLike, targets: ArrayLike) -> None:
        s = as_scores(scores, "scores")
        t = as_labels(targets, "targets", num_classes=2)
        if s.shape != t.shape:
            raise ValueError(f"scores shape {s.shape} does not match targets shape {t.shape}")
        self._scores.append(s)
        self._targets.append(t)

    @property
    def targets(self) -> np.ndarray:
        return np.concatenate(self._targets) if self._targets else np.zeros(0, np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate(self._scores) if self._scores else np.zeros(0)

    def compute(self) -> float:
        t, s = self.targets, self.scores
        if t.size == 0:
            return warn_nan("AUROC undefined: no samples")
        present = np.unique(t)
        if present.size < 2:
            return warn_nan(f"AUROC undefined: only one class present in targets ({present.tolist()}, n={t.size})")
        return float(roc_auc_score(t, s))


class MulticlassAUROC(Metric):
    """Macro one-vs-rest AUROC over the classes present in the targets.

    ``update(probs (N, C), targets (N,))``. Classes absent from the targets have no positives, so
    their one-vs-rest AUROC is undefined; they are dropped and the remaining probability columns
    are renormalised to sum to one (scikit-learn's ``multi_class="ovr"`` requires it). With two
    classes present this reduces to the binary AUROC of ``p_b / (p_a + p_b)``.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        super().__init__()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, probs: ArrayLike, targets: ArrayLike) -> None:
        p = as_probs(probs, "probs")
        if self.num_classes is None:
            self.num_classes = p.shape[1]
        if p.shape[1] != self.num_classes:
            raise ValueError(f"probs has {p.shape[1]} columns, expected num_classes={self.num_classes}")
        if np.any(p < 0):
            raise ValueError("probs must be non-negative probabilities (apply softmax to logits first)")
        t = as_labels(targets, "targets", num_classes=self.num_classes)
        if t.shape[0] != p.shape[0]:
            raise ValueError(f"probs shape {p.shape} does not match targets shape {t.shape}")
        self._probs.append(p)
        self._targets.append(t)

    def compute(self) -> float:
        if not self._targets:
            return warn_nan("multi-class AUROC undefined: no samples")
        t = np.concatenate(self._targets)
        p = np.concatenate(self._probs)
        present = np.unique(t)
        if present.size < 2:
            return warn_nan(f"multi-class AUROC undefined: only one class present in targets ({present.tolist()})")
        sub = p[:, present]
        total = sub.sum(axis=1, keepdims=True)
        # A row with zero mass on every present class carries no ranking information: uniform.
        sub = np.where(total > 0, sub / np.where(total > 0, total, 1.0), 1.0 / present.size)
        if present.size == 2:
            return float(roc_auc_score(t == present[1], sub[:, 1]))
        return float(roc_auc_score(t, sub, multi_class="ovr", average="macro", labels=present))


class _LabelAccumulator(Metric):
    """Stores predicted labels (argmax of probabilities) and targets."""

    def reset(self) -> None:
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, probs: ArrayLike, targets: ArrayLike) -> None:
        """``probs`` (N, C) probabilities/logits (argmax is taken) or (N,) predicted labels."""
        p = as_numpy(probs)
        t = as_labels(targets, "targets")
        if p.ndim == 2 and p.shape[0] == t.shape[0]:
            pred = np.argmax(p, axis=1)
        elif p.ndim <= 1:
            pred = as_labels(p, "predicted labels")
        else:
            raise ValueError(f"probs shape {p.shape} does not match targets shape {t.shape}")
        if pred.shape != t.shape:
            raise ValueError(f"predictions shape {pred.shape} does not match targets shape {t.shape}")
        self._preds.append(pred.astype(np.int64))
        self._targets.append(t)

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._targets:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._preds), np.concatenate(self._targets)


class Accuracy(_LabelAccumulator):
    """Fraction of samples whose argmax class equals the target (sklearn ``accuracy_score``)."""

    def compute(self) -> float:
        pred, t = self._data()
        if t.size == 0:
            return warn_nan("accuracy undefined: no samples")
        return float(accuracy_score(t, pred))


class BalancedAccuracy(_LabelAccumulator):
    """Mean per-class recall over the classes present in the targets (sklearn)."""

    def compute(self) -> float:
        pred, t = self._data()
        if t.size == 0:
            return warn_nan("balanced accuracy undefined: no samples")
        with warnings.catch_warnings():
            # Predicting a class that is absent from the targets is legitimate here (e.g. a test
            # split without malignant cases); sklearn warns about it on every call.
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            return float(balanced_accuracy_score(t, pred))


class ExpectedCalibrationError(Metric):
    """Expected calibration error of the max-probability confidence (Guo et al., 2017).

    ``ECE = sum_b (n_b / N) * |accuracy_b - mean_confidence_b|`` over ``n_bins`` equal-width bins
    ``(k/n_bins, (k+1)/n_bins]`` (confidence 0 goes to the first bin), where confidence is the
    largest class probability and "correct" means its class equals the target. Streaming: only
    per-bin sums are kept.
    """

    def __init__(self, n_bins: int = 15) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        super().__init__()

    def reset(self) -> None:
        self._count = np.zeros(self.n_bins, np.int64)
        self._conf_sum = np.zeros(self.n_bins, np.float64)
        self._correct_sum = np.zeros(self.n_bins, np.float64)

    def update(self, probs: ArrayLike, targets: ArrayLike) -> None:
        p = as_probs(probs, "probs")
        t = as_labels(targets, "targets", num_classes=p.shape[1])
        if t.shape[0] != p.shape[0]:
            raise ValueError(f"probs shape {p.shape} does not match targets shape {t.shape}")
        conf = np.clip(p.max(axis=1), 0.0, 1.0)
        correct = (p.argmax(axis=1) == t).astype(np.float64)
        # ceil(conf * n) - 1 maps (k/n, (k+1)/n] to bin k.
        idx = np.clip(np.ceil(conf * self.n_bins).astype(np.int64) - 1, 0, self.n_bins - 1)
        self._count += np.bincount(idx, minlength=self.n_bins)
        self._conf_sum += np.bincount(idx, weights=conf, minlength=self.n_bins)
        self._correct_sum += np.bincount(idx, weights=correct, minlength=self.n_bins)

    def compute(self) -> float:
        n = self._count.sum()
        if n == 0:
            return warn_nan("ECE undefined: no samples")
        gap = np.abs(self._correct_sum - self._conf_sum)  # = n_b * |acc_b - conf_b|
        return float(gap.sum() / n)


