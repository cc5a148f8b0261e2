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

One module per level: :mod:`.image` (image and class level), :mod:`.pixel` (pixel level), :mod:`.thresholds` (the
heatmap threshold), :mod:`.summary` (over seeds), :mod:`.evaluator` (all of them at once); input checks in :mod:`.base`.
"""

from monai_ultraad.metrics.evaluator import UltraADEvaluator
from monai_ultraad.metrics.image import (
    Accuracy,
    BalancedAccuracy,
    BinaryAUROC,
    ExpectedCalibrationError,
    MulticlassAUROC,
)
from monai_ultraad.metrics.pixel import DiceIoU, DiceResult, PixelAUROC
from monai_ultraad.metrics.summary import MetricSummary, format_mean_std, summarize_over_seeds, summarize_values
from monai_ultraad.metrics.thresholds import DEFAULT_THRESHOLD_CANDIDATES, best_threshold, dice_threshold_curve

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

