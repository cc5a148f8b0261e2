"""The heatmap threshold: Dice over candidate thresholds and the best one (chosen on validation images only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from monai_ultraad.metrics.base import ArrayLike, as_numpy, map_and_mask

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
        m, g = map_and_mask(m_raw, g_raw)
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
    if not any(g is not None and np.any(as_numpy(g) > 0.5) for g in masks):
        raise ValueError("best_threshold needs at least one mask with lesion pixels")
    cand, dice = dice_threshold_curve(maps, masks, candidates)
    return float(cand[int(np.nanargmax(dice))])


