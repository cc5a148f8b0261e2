"""Pixel-level metrics, streaming with bounded state: pixel AUROC (histograms) and Dice / IoU at a threshold."""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from monai_ultraad.metrics.base import ArrayLike, Metric, map_and_mask, warn_nan


class PixelAUROC(Metric):
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
        m, g = map_and_mask(anomaly_map, mask)
        q = np.rint(m * (self.n_levels - 1)).astype(np.int64)
        self._pos += np.bincount(q[g], minlength=self.n_levels)
        self._neg += np.bincount(q[~g], minlength=self.n_levels)

    def compute(self) -> float:
        n_pos, n_neg = int(self._pos.sum()), int(self._neg.sum())
        if n_pos == 0 or n_neg == 0:
            return warn_nan(f"pixel AUROC undefined: {n_pos} lesion and {n_neg} background pixels (need both)")
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


class DiceIoU(Metric):
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
        m, g = map_and_mask(anomaly_map, mask)
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


