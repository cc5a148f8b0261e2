"""Evaluation metrics for UltraAD (image level, class level and pixel level).

Every metric object follows the anomalib / torchmetrics pattern: ``update(...)`` any number of
times, ``compute()`` once, ``reset()`` to start over. Inputs may be numpy arrays, torch tensors
(any device; they are detached and copied to the CPU) or nested lists.

Conventions shared by all metrics:

* A metric that is undefined for the data seen (e.g. AUROC with a single class, anything on zero
  samples) returns ``nan`` and emits a :class:`UserWarning` that says why. Malformed input
  (wrong shapes, NaN scores, labels out of range) raises :class:`ValueError` instead.
* Anomaly maps are expected in ``[0, 1]``; values slightly outside (e.g. bicubic resize
  overshoot) are clipped. Masks are binary; a pixel is a lesion pixel when ``mask > 0.5``, so
  ``{0, 1}``, boolean and ``{0, 255}`` masks all work.
* A pixel is predicted anomalous when ``map >= threshold``.

Image-level metrics keep the (small) per-image scores in memory and use scikit-learn. Pixel-level
metrics are streaming and keep bounded state whatever the number or size of images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from monai_ultraad.constants import CLASS_NAMES, NORMAL_INDEX

__all__ = [
    "DEFAULT_THRESHOLD_CANDIDATES",
    "Accuracy",
    "BalancedAccuracy",
    "BinaryAUROC",
    "DiceIoU",
    "DiceResult",
    "ExpectedCalibrationError",
    "MetricSummary",
    "MulticlassAUROC",
    "PixelAUROC",
    "UltraADEvaluator",
    "best_threshold",
    "dice_threshold_curve",
    "format_mean_std",
    "summarize_over_seeds",
    "summarize_values",
]

ArrayLike = Any  # numpy array, torch tensor, list or scalar


# --------------------------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike, dtype: Any = None) -> np.ndarray:
    """Return ``x`` as a numpy array, detaching / moving torch tensors to the CPU first."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # bfloat16 has no numpy equivalent; float64 stays float64
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _warn_nan(message: str) -> float:
    warnings.warn(message, UserWarning, stacklevel=3)
    return float("nan")


def _as_scores(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_labels(x: ArrayLike, name: str, num_classes: int | None = None) -> np.ndarray:
    arr = _to_numpy(x).reshape(-1)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must hold integer class indices, got values like {arr[:5]}")
    arr = arr.astype(np.int64)
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got range [{arr.min()}, {arr.max()}]")
    return arr


def _as_probs(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, np.float64)
    if arr.ndim == 1:  # a single sample
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _map_and_mask(anomaly_map: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image's map and mask; return a clipped float map and a boolean mask (H, W).

    ``(1, H, W)`` and ``(H, W)`` are both accepted (and may be mixed) but anything with more than
    one image raises: the per-image metrics would otherwise silently treat a batch as one image.
    """
    m = _to_numpy(anomaly_map, np.float64)
    g = _to_numpy(mask)
    m2 = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    g2 = g[0] if g.ndim == 3 and g.shape[0] == 1 else g
    if m2.shape != g2.shape:
        raise ValueError(f"anomaly map shape {m.shape} does not match mask shape {g.shape}")
    if m2.ndim != 2:
        raise ValueError(f"expected one image of shape (H, W) or (1, H, W), got map shape {m.shape}")
    if not np.all(np.isfinite(m2)):
        raise ValueError("anomaly map contains NaN or infinite values")
    return np.clip(m2, 0.0, 1.0), g2 > 0.5


class _Metric:
    """Common ``reset`` on construction; subclasses implement ``update`` / ``compute``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# image-level metrics
# --------------------------------------------------------------------------------------------


class BinaryAUROC(_Metric):
    """Area under the ROC curve for binary targets (e.g. normal=0 vs abnormal=1 images).

    ``update(scores, targets)``: higher score = more likely positive. ``compute()`` uses
    :func:`sklearn.metrics.roc_auc_score`; ``nan`` (with a warning) when only one class is present.
    """

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, scores: ArrayLike, targets: ArrayLike) -> None:
        s = _as_scores(scores, "scores")
        t = _as_labels(targets, "targets", num_classes=2)
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
            return _warn_nan("AUROC undefined: no samples")
        present = np.unique(t)
        if present.size < 2:
            return _warn_nan(f"AUROC undefined: only one class present in targets ({present.tolist()}, n={t.size})")
        return float(roc_auc_score(t, s))


class MulticlassAUROC(_Metric):
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
        p = _as_probs(probs, "probs")
        if self.num_classes is None:
            self.num_classes = p.shape[1]
        if p.shape[1] != self.num_classes:
            raise ValueError(f"probs has {p.shape[1]} columns, expected num_classes={self.num_classes}")
        if np.any(p < 0):
            raise ValueError("probs must be non-negative probabilities (apply softmax to logits first)")
        t = _as_labels(targets, "targets", num_classes=self.num_classes)
        if t.shape[0] != p.shape[0]:
            raise ValueError(f"probs shape {p.shape} does not match targets shape {t.shape}")
        self._probs.append(p)
        self._targets.append(t)

    def compute(self) -> float:
        if not self._targets:
            return _warn_nan("multi-class AUROC undefined: no samples")
        t = np.concatenate(self._targets)
        p = np.concatenate(self._probs)
        present = np.unique(t)
        if present.size < 2:
            return _warn_nan(f"multi-class AUROC undefined: only one class present in targets ({present.tolist()})")
        sub = p[:, present]
        total = sub.sum(axis=1, keepdims=True)
        # A row with zero mass on every present class carries no ranking information: uniform.
        sub = np.where(total > 0, sub / np.where(total > 0, total, 1.0), 1.0 / present.size)
        if present.size == 2:
            return float(roc_auc_score(t == present[1], sub[:, 1]))
        return float(roc_auc_score(t, sub, multi_class="ovr", average="macro", labels=present))


class _LabelAccumulator(_Metric):
    """Stores predicted labels (argmax of probabilities) and targets."""

    def reset(self) -> None:
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, probs: ArrayLike, targets: ArrayLike) -> None:
        """``probs`` (N, C) probabilities/logits (argmax is taken) or (N,) predicted labels."""
        p = _to_numpy(probs)
        t = _as_labels(targets, "targets")
        if p.ndim == 2 and p.shape[0] == t.shape[0]:
            pred = np.argmax(p, axis=1)
        elif p.ndim <= 1:
            pred = _as_labels(p, "predicted labels")
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
            return _warn_nan("accuracy undefined: no samples")
        return float(accuracy_score(t, pred))


class BalancedAccuracy(_LabelAccumulator):
    """Mean per-class recall over the classes present in the targets (sklearn)."""

    def compute(self) -> float:
        pred, t = self._data()
        if t.size == 0:
            return _warn_nan("balanced accuracy undefined: no samples")
        with warnings.catch_warnings():
            # Predicting a class that is absent from the targets is legitimate here (e.g. a test
            # split without malignant cases); sklearn warns about it on every call.
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            return float(balanced_accuracy_score(t, pred))


class ExpectedCalibrationError(_Metric):
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
        p = _as_probs(probs, "probs")
        t = _as_labels(targets, "targets", num_classes=p.shape[1])
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
            return _warn_nan("ECE undefined: no samples")
        gap = np.abs(self._correct_sum - self._conf_sum)  # = n_b * |acc_b - conf_b|
        return float(gap.sum() / n)


# --------------------------------------------------------------------------------------------
# pixel-level metrics
# --------------------------------------------------------------------------------------------


class PixelAUROC(_Metric):
    """Streaming pixel-level AUROC with bounded memory.

    Scores are quantised to ``n_levels`` (default ``2**16``) equally spaced levels
    ``k / (n_levels - 1)`` in ``[0, 1]`` and counted in two histograms (lesion / background
    pixels). ``compute()`` returns the *exact* AUROC of the quantised scores, i.e. the
    Mann-Whitney statistic ``P(s+ > s-) + 0.5 * P(s+ == s-)`` (ties count half, which equals the
    trapezoidal area under the ROC curve). Quantisation changes the result only through pairs of
    pixels whose scores differ by less than ``1 / (n_levels - 1)``; in practice the deviation from
    the unquantised AUROC is far below 1e-4. State is ``2 * n_levels`` int64 counters (1 MiB).

    ``update(anomaly_map, mask)`` takes one image: map ``(H, W)`` or ``(1, H, W)`` and a binary
    mask of the same shape.
    """

    def __init__(self, n_levels: int = 2**16) -> None:
        if n_levels < 2:
            raise ValueError(f"n_levels must be >= 2, got {n_levels}")
        self.n_levels = int(n_levels)
        super().__init__()

    def reset(self) -> None:
        self._pos = np.zeros(self.n_levels, np.int64)
        self._neg = np.zeros(self.n_levels, np.int64)

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the accumulated state (constant: independent of the data seen)."""
        return int(self._pos.nbytes + self._neg.nbytes)

    def update(self, anomaly_map: ArrayLike, mask: ArrayLike) -> None:
        m, g = _map_and_mask(anomaly_map, mask)
        q = np.rint(m * (self.n_levels - 1)).astype(np.int64)
        self._pos += np.bincount(q[g], minlength=self.n_levels)
        self._neg += np.bincount(q[~g], minlength=self.n_levels)

    def compute(self) -> float:
        n_pos, n_neg = int(self._pos.sum()), int(self._neg.sum())
        if n_pos == 0 or n_neg == 0:
            return _warn_nan(f"pixel AUROC undefined: {n_pos} lesion and {n_neg} background pixels (need both)")
        # float64 before multiplying: pixel counts of a large test set overflow int64 products.
        pos = self._pos.astype(np.float64)
        neg = self._neg.astype(np.float64)
        neg_below = np.cumsum(neg) - neg  # negatives with a strictly lower level
        wins = np.dot(pos, neg_below) + 0.5 * np.dot(pos, neg)
        return float(wins / (float(n_pos) * float(n_neg)))


class DiceResult(TypedDict):
    """Output of :meth:`DiceIoU.compute`."""

    dice: float
    iou: float
    dice_per_image: float
    iou_per_image: float
    fp_pixel_rate_empty: float
    n_lesion_images: int
    n_empty_images: int


class DiceIoU(_Metric):
    """Dice and IoU of thresholded anomaly maps (``map >= threshold``) against lesion masks.

    Definitions (TP/FP/FN are pixel counts; sums run over the images named):

    * ``dice`` / ``iou`` (global, "micro"): ``2*sum TP / (2*sum TP + sum FP + sum FN)`` and
      ``sum TP / (sum TP + sum FP + sum FN)`` over **all** images, lesion-free ones included (their
      false positives lower the score). ``nan`` if no image has lesion or predicted pixels.
    * ``dice_per_image`` / ``iou_per_image``: mean of the per-image Dice/IoU over the images whose
      ground truth contains a lesion (for an empty ground truth the per-image Dice is 0 or
      undefined and says nothing about segmentation quality). ``nan`` if there is no such image.
    * ``fp_pixel_rate_empty``: for images with an empty ground truth, predicted-anomalous pixels
      divided by all their pixels (pooled). ``nan`` if there is no such image.

    Only per-image pixel counts are kept, so memory grows by four integers per image. The counts
    match :func:`monai.metrics.compute_dice` / :func:`monai.metrics.compute_iou` (checked in the
    tests); MONAI's ``DiceMetric`` is not used directly because it cannot pool counts globally.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        super().__init__()

    def reset(self) -> None:
        self._counts: list[tuple[int, int, int, int]] = []  # (tp, fp, fn, n_pixels) per image

    def update(self, anomaly_map: ArrayLike, mask: ArrayLike) -> None:
        m, g = _map_and_mask(anomaly_map, mask)
        pred = m >= self.threshold
        tp = int(np.count_nonzero(pred & g))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(g)) - tp
        self._counts.append((tp, fp, fn, int(g.size)))

    def compute(self) -> DiceResult:
        c = np.asarray(self._counts, np.int64).reshape(-1, 4)
        tp, fp, fn, npx = (c[:, i] for i in range(4))
        lesion = (tp + fn) > 0

        def _ratio(num: float, den: float) -> float:
            return float(num / den) if den > 0 else float("nan")

        TP, FP, FN = float(tp.sum()), float(fp.sum()), float(fn.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            dice_i = 2 * tp[lesion] / (2 * tp[lesion] + fp[lesion] + fn[lesion])
            iou_i = tp[lesion] / (tp[lesion] + fp[lesion] + fn[lesion])
        return DiceResult(
            dice=_ratio(2 * TP, 2 * TP + FP + FN),
            iou=_ratio(TP, TP + FP + FN),
            dice_per_image=float(dice_i.mean()) if dice_i.size else float("nan"),
            iou_per_image=float(iou_i.mean()) if iou_i.size else float("nan"),
            fp_pixel_rate_empty=_ratio(float(fp[~lesion].sum()), float(npx[~lesion].sum())),
            n_lesion_images=int(lesion.sum()),
            n_empty_images=int((~lesion).sum()),
        )


DEFAULT_THRESHOLD_CANDIDATES: np.ndarray = np.round(np.linspace(0.01, 0.99, 99), 2)


def dice_threshold_curve(
    maps: Iterable[ArrayLike],
    masks: Iterable[ArrayLike],
    candidates: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global Dice (as in :class:`DiceIoU`) of ``map >= t`` for every candidate threshold ``t``.

    Pairs whose mask is ``None`` are skipped. Exact (no quantisation): per image the scores are sorted once and the counts above each
    candidate are read off with ``searchsorted``. Returns ``(thresholds, dice)``; a candidate
    with no lesion and no predicted pixels gets Dice ``nan``.
    """
    cand = np.asarray(DEFAULT_THRESHOLD_CANDIDATES if candidates is None else candidates, np.float64).reshape(-1)
    if cand.size == 0:
        raise ValueError("candidates must not be empty")
    tp = np.zeros(cand.size, np.float64)
    pred = np.zeros(cand.size, np.float64)
    n_gt = 0.0
    n_images = 0
    for m_raw, g_raw in zip(maps, masks, strict=True):
        if g_raw is None:  # image without ground truth: nothing to score, as in UltraADEvaluator
            continue
        m, g = _map_and_mask(m_raw, g_raw)
        all_sorted = np.sort(m, axis=None)
        pos_sorted = np.sort(m[g], axis=None)
        # count of values >= t is n - (number of values < t)
        pred += all_sorted.size - np.searchsorted(all_sorted, cand, side="left")
        tp += pos_sorted.size - np.searchsorted(pos_sorted, cand, side="left")
        n_gt += pos_sorted.size
        n_images += 1
    if n_images == 0:
        raise ValueError("no (map, mask) pair given")
    den = pred + n_gt  # 2TP + FP + FN = |pred| + |gt|
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(den > 0, 2 * tp / den, np.nan)
    return cand, dice


def best_threshold(
    maps: Iterable[ArrayLike],
    masks: Iterable[ArrayLike],
    candidates: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Threshold (from ``candidates``) that maximises the global Dice of ``map >= t``.

    Use it on **validation** data only and then apply the returned threshold, fixed, to the
    test set: choosing the threshold on test masks leaks the test labels and inflates Dice/IoU.

    Args:
        maps: per-image anomaly maps ``(H, W)`` / ``(1, H, W)`` in ``[0, 1]`` (sizes may differ).
        masks: matching binary masks; ``None`` entries (no ground truth) are skipped. At least one
            lesion pixel is required overall.
        candidates: thresholds to try; default ``0.01, 0.02, ..., 0.99``.

    Returns:
        The best candidate; on ties the lowest such threshold.
    """
    maps = list(maps)
    masks = list(masks)
    if not any(g is not None and np.any(_to_numpy(g) > 0.5) for g in masks):
        raise ValueError("best_threshold needs at least one mask with lesion pixels")
    cand, dice = dice_threshold_curve(maps, masks, candidates)
    return float(cand[int(np.nanargmax(dice))])


# --------------------------------------------------------------------------------------------
# aggregation over seeds
# --------------------------------------------------------------------------------------------


class MetricSummary(TypedDict):
    """Mean/std of one metric over repeated runs (e.g. few-shot seeds)."""

    mean: float
    std: float
    n: int  # number of finite values used for mean/std
    values: list[float]  # all values, in run order, nan for runs that lacked/failed the metric


def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, (int, float, np.integer, np.floating))


def summarize_values(values: Iterable[float]) -> MetricSummary:
    """Nan-aware mean and sample std (``ddof=1``; 0 for a single value; nan for none)."""
    vals = [float(v) for v in values]
    finite = np.asarray([v for v in vals if math.isfinite(v)], np.float64)
    n = int(finite.size)
    mean = float(finite.mean()) if n else float("nan")
    std = float(finite.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
    return MetricSummary(mean=mean, std=std, n=n, values=vals)


def summarize_over_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, MetricSummary]:
    """Summarise a list of metric dicts (one per seed) into ``{name: MetricSummary}``.

    Only numeric scalar entries are summarised (lists such as ``"notes"``, strings and booleans are
    skipped). A metric missing from some runs counts as ``nan`` for them, so ``values`` always has
    one entry per run and ``n`` says how many were usable. Key order follows first appearance.
    """
    names: list[str] = []
    for r in results:
        for k, v in r.items():
            if k not in names and _is_number(v):
                names.append(k)
    out: dict[str, MetricSummary] = {}
    for k in names:
        out[k] = summarize_values(float(r[k]) if k in r and _is_number(r[k]) else float("nan") for r in results)
    return out


def format_mean_std(summary: Mapping[str, Any], digits: int = 3, show_n: bool = False) -> str:
    """Format a :class:`MetricSummary` as ``"0.812 ± 0.034"`` (``"nan"`` when no value)."""
    n = int(summary.get("n", 0))
    if n == 0 or not math.isfinite(float(summary["mean"])):
        text = "nan"
    else:
        text = f"{float(summary['mean']):.{digits}f} ± {float(summary['std']):.{digits}f}"
    return f"{text} (n={n})" if show_n else text


# --------------------------------------------------------------------------------------------
# standard evaluation bundle
# --------------------------------------------------------------------------------------------


class UltraADEvaluator:
    """The standard UltraAD metric set, accumulated batch by batch.

    ``update(class_probs (B, C), scores (B,), targets (B,), maps, masks)`` where ``maps`` is a
    ``(B, H, W)`` / ``(B, 1, H, W)`` array or a list of per-image ``(H, W)`` maps in ``[0, 1]``
    (sizes may differ per image) and ``masks`` is ``None`` or a matching list whose entries may be
    ``None`` for images without a ground-truth mask. Pixel metrics use only images with a mask:
    give normal images an all-zero mask so their pixels count as background.

    ``compute()`` returns a dict with ``image_auroc`` (normal vs abnormal from the anomaly score),
    ``cls_auroc_macro`` (OvR over the classes present), ``benign_malignant_auroc`` (score
    ``P(malignant) / (P(benign) + P(malignant))`` on abnormal images), ``accuracy``,
    ``balanced_accuracy``, ``ece``, ``pixel_auroc``, ``dice``, ``iou`` (global, at
    ``threshold``), ``dice_per_image``, ``iou_per_image``, ``fp_pixel_rate_empty``,
    ``threshold``, ``n_images``, ``n_images_with_mask``, ``n_<class>`` per class, and ``notes``:
    a list of reasons for every metric that is ``nan``.
    """

    PIXEL_KEYS: tuple[str, ...] = (
        "pixel_auroc",
        "dice",
        "iou",
        "dice_per_image",
        "iou_per_image",
        "fp_pixel_rate_empty",
    )

    def __init__(
        self,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
        normal_index: int = NORMAL_INDEX,
        n_bins: int = 15,
    ) -> None:
        self.threshold = float(threshold)
        self.class_names = tuple(class_names)
        self.normal_index = int(normal_index)
        self.n_bins = int(n_bins)
        self.reset()

    def reset(self) -> None:
        self._image_auroc = BinaryAUROC()
        self._cls_auroc = MulticlassAUROC(num_classes=len(self.class_names))
        self._bm_auroc = BinaryAUROC()
        self._accuracy = Accuracy()
        self._balanced = BalancedAccuracy()
        self._ece = ExpectedCalibrationError(self.n_bins)
        self._pixel_auroc = PixelAUROC()
        self._dice = DiceIoU(self.threshold)
        self._targets: list[np.ndarray] = []
        self._n_with_mask = 0

    @staticmethod
    def _split_images(x: ArrayLike, batch: int, name: str) -> list[Any]:
        """A list of per-image items from a list/tuple or a batched array/tensor."""
        if isinstance(x, (list, tuple)):
            items = list(x)
        else:
            arr = _to_numpy(x)
            if arr.ndim not in (3, 4):
                raise ValueError(f"{name} must be a list of (H, W) maps or a (B, [1,] H, W) array, got {arr.shape}")
            items = list(arr)
        if len(items) != batch:
            raise ValueError(f"{name} has {len(items)} images but the batch has {batch}")
        return items

    def update(
        self,
        class_probs: ArrayLike,
        scores: ArrayLike,
        targets: ArrayLike,
        maps: ArrayLike | Sequence[ArrayLike] | None = None,
        masks: ArrayLike | Sequence[ArrayLike | None] | None = None,
    ) -> None:
        probs = _as_probs(class_probs, "class_probs")
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"class_probs has {probs.shape[1]} columns, expected {len(self.class_names)}")
        s = _as_scores(scores, "scores")
        t = _as_labels(targets, "targets", num_classes=len(self.class_names))
        if not (probs.shape[0] == s.shape[0] == t.shape[0]):
            raise ValueError(f"batch sizes differ: class_probs {probs.shape}, scores {s.shape}, targets {t.shape}")
        b = t.shape[0]
        map_list = self._split_images(maps, b, "maps") if maps is not None else None
        mask_list = self._split_images(masks, b, "masks") if masks is not None else None
        if mask_list is not None and map_list is None and any(m is not None for m in mask_list):
            raise ValueError("masks were given without maps")

        # Validate everything before updating anything, so a bad batch leaves no partial state.
        pairs = []
        if map_list is not None and mask_list is not None:
            pairs = [_map_and_mask(m, g) for m, g in zip(map_list, mask_list) if g is not None]

        self._targets.append(t)
        self._image_auroc.update(s, (t != self.normal_index).astype(np.int64))
        self._cls_auroc.update(probs, t)
        self._accuracy.update(probs, t)
        self._balanced.update(probs, t)
        self._ece.update(probs, t)
        if "benign" in self.class_names and "malignant" in self.class_names:
            ib, im = self.class_names.index("benign"), self.class_names.index("malignant")
            abnormal = (t == ib) | (t == im)
            if abnormal.any():
                pb, pm = probs[abnormal, ib], probs[abnormal, im]
                den = pb + pm
                bm = np.where(den > 0, pm / np.where(den > 0, den, 1.0), 0.5)
                self._bm_auroc.update(bm, (t[abnormal] == im).astype(np.int64))
        for m, g in pairs:
            self._pixel_auroc.update(m, g)
            self._dice.update(m, g)
        self._n_with_mask += len(pairs)

    def compute(self) -> dict[str, Any]:
        notes: list[str] = []

        def run(name: str, fn: Any) -> Any:
            # Sub-metric warnings (why a value is nan) become notes instead of console noise.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = fn()
            notes.extend(f"{name}: {w.message}" for w in caught)
            return value

        targets = np.concatenate(self._targets) if self._targets else np.zeros(0, np.int64)
        out: dict[str, Any] = {
            "image_auroc": run("image_auroc", self._image_auroc.compute),
            "cls_auroc_macro": run("cls_auroc_macro", self._cls_auroc.compute),
        }
        if "benign" in self.class_names and "malignant" in self.class_names:
            if self._bm_auroc.targets.size == 0:
                out["benign_malignant_auroc"] = float("nan")
                notes.append("benign_malignant_auroc: no benign or malignant images")
            else:
                out["benign_malignant_auroc"] = run("benign_malignant_auroc", self._bm_auroc.compute)
        else:
            out["benign_malignant_auroc"] = float("nan")
            notes.append("benign_malignant_auroc: class_names lack 'benign' and/or 'malignant'")
        out["accuracy"] = run("accuracy", self._accuracy.compute)
        out["balanced_accuracy"] = run("balanced_accuracy", self._balanced.compute)
        out["ece"] = run("ece", self._ece.compute)
        if self._n_with_mask == 0:
            out["pixel_auroc"] = float("nan")
            notes.append(f"{', '.join(self.PIXEL_KEYS)}: no image had both a map and a mask")
        else:
            out["pixel_auroc"] = run("pixel_auroc", self._pixel_auroc.compute)
        seg = self._dice.compute()
        out.update(
            dice=seg["dice"],
            iou=seg["iou"],
            dice_per_image=seg["dice_per_image"],
            iou_per_image=seg["iou_per_image"],
            fp_pixel_rate_empty=seg["fp_pixel_rate_empty"],
            threshold=self.threshold,
        )
        if self._n_with_mask and seg["n_lesion_images"] == 0:
            notes.append("dice_per_image, iou_per_image: no image with a lesion in its mask")
        if self._n_with_mask and seg["n_empty_images"] == 0:
            notes.append("fp_pixel_rate_empty: no image with an empty mask")
        out["n_images"] = int(targets.size)
        out["n_images_with_mask"] = int(self._n_with_mask)
        counts = np.bincount(targets, minlength=len(self.class_names))
        for i, name in enumerate(self.class_names):
            out[f"n_{name}"] = int(counts[i])
        # Any nan not yet explained gets a generic note, so a nan is never silent.
        explained = {k.strip() for note in notes for k in note.split(":", 1)[0].split(",")}
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value) and key not in explained:
                notes.append(f"{key}: undefined for the data seen")
        out["notes"] = notes
        return out
