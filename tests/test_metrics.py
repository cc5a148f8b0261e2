"""Tests of monai_ultraad.metrics against scikit-learn / MONAI and hand-checked cases."""

from __future__ import annotations

import itertools
import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.metrics import (
    Accuracy,
    BalancedAccuracy,
    BinaryAUROC,
    DiceIoU,
    ExpectedCalibrationError,
    MulticlassAUROC,
    PixelAUROC,
    UltraADEvaluator,
    best_threshold,
    dice_threshold_curve,
    format_mean_std,
    summarize_over_seeds,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _probs(rng: np.random.Generator, n: int, c: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(c), size=n)


# ---------------------------------------------------------------- BinaryAUROC


def test_binary_auroc_matches_sklearn_over_batches(rng):
    t = rng.integers(0, 2, 200)
    s = t * 0.5 + rng.random(200)
    m = BinaryAUROC()
    for i in range(0, 200, 37):  # uneven batches, mixed numpy / torch
        chunk = slice(i, i + 37)
        m.update(torch.from_numpy(s[chunk]) if i % 2 else s[chunk], t[chunk])
    assert m.compute() == pytest.approx(roc_auc_score(t, s), abs=1e-12)


def test_binary_auroc_hand_cases():
    m = BinaryAUROC()
    m.update([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert m.compute() == 1.0
    m.reset()
    m.update([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    assert m.compute() == 0.0
    m.reset()
    m.update([0.5, 0.5], [True, False])  # a tie counts half
    assert m.compute() == 0.5


def test_binary_auroc_single_class_and_empty_is_nan_with_warning():
    m = BinaryAUROC()
    with pytest.warns(UserWarning, match="no samples"):
        assert math.isnan(m.compute())
    m.update([0.1, 0.7], [1, 1])
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(m.compute())


def test_binary_auroc_rejects_bad_input():
    m = BinaryAUROC()
    with pytest.raises(ValueError, match="NaN"):
        m.update([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError):
        m.update([0.1, 0.2], [0, 2])  # not binary
    with pytest.raises(ValueError, match="shape"):
        m.update([0.1, 0.2, 0.3], [0, 1])


# ---------------------------------------------------------------- MulticlassAUROC


def test_multiclass_auroc_matches_sklearn_all_classes_present(rng):
    t = rng.integers(0, 3, 150)
    p = _probs(rng, 150)
    p[np.arange(150), t] += 0.3
    p /= p.sum(1, keepdims=True)
    m = MulticlassAUROC()
    m.update(p[:70], t[:70])
    m.update(torch.from_numpy(p[70:]), torch.from_numpy(t[70:]))
    expected = roc_auc_score(t, p, multi_class="ovr", average="macro")
    assert m.compute() == pytest.approx(expected, abs=1e-12)


def test_multiclass_auroc_absent_class_restricts_and_renormalises(rng):
    t = rng.choice([0, 2], size=80)  # class 1 (benign) absent
    p = _probs(rng, 80)
    m = MulticlassAUROC(num_classes=3)
    m.update(p, t)
    renorm = p[:, 2] / (p[:, 0] + p[:, 2])
    assert m.compute() == pytest.approx(roc_auc_score(t == 2, renorm), abs=1e-12)


def test_multiclass_auroc_perfect_and_single_class():
    p = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.9 + 0.1 / 3
    m = MulticlassAUROC()
    m.update(p, [0, 1, 2, 0, 1, 2])
    assert m.compute() == pytest.approx(1.0)
    m.reset()
    m.update(p[:2], [1, 1])
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(m.compute())


def test_multiclass_auroc_rejects_bad_input():
    m = MulticlassAUROC(num_classes=3)
    with pytest.raises(ValueError, match="columns"):
        m.update(np.ones((2, 4)) / 4, [0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        m.update([[-1.0, 1.0, 1.0]], [0])
    with pytest.raises(ValueError):
        m.update(np.ones((2, 3)) / 3, [0, 3])  # label out of range


# ---------------------------------------------------------------- accuracy


def test_accuracy_and_balanced_accuracy_match_sklearn(rng):
    t = rng.integers(0, 3, 90)
    p = _probs(rng, 90)
    acc, bal = Accuracy(), BalancedAccuracy()
    for m in (acc, bal):
        m.update(p[:40], t[:40])
        m.update(torch.from_numpy(p[40:]), t[40:])
    pred = p.argmax(1)
    assert acc.compute() == pytest.approx(accuracy_score(t, pred))
    assert bal.compute() == pytest.approx(balanced_accuracy_score(t, pred))


def test_balanced_accuracy_accepts_labels_and_absent_classes_without_warning():
    bal = BalancedAccuracy()
    bal.update(np.array([0, 2, 2, 0]), np.array([0, 0, 0, 0]))  # predicted labels, 1-D
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bal.compute() == pytest.approx(0.5)


def test_accuracy_empty_is_nan():
    with pytest.warns(UserWarning):
        assert math.isnan(Accuracy().compute())


# ---------------------------------------------------------------- ECE


def _ece_reference(p: np.ndarray, t: np.ndarray, n_bins: int) -> float:
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == t[sel]).mean() - conf[sel].mean())
    return total


def test_ece_matches_reference(rng):
    p = _probs(rng, 300)
    t = rng.integers(0, 3, 300)
    m = ExpectedCalibrationError(n_bins=15)
    m.update(p[:100], t[:100])
    m.update(p[100:], t[100:])
    assert m.compute() == pytest.approx(_ece_reference(p, t, 15), abs=1e-12)


def test_ece_hand_cases():
    m = ExpectedCalibrationError(n_bins=10)
    # confidence 0.8 everywhere, 4 of 5 correct: perfectly calibrated
    p = np.array([[0.8, 0.1, 0.1]] * 5)
    m.update(p, [0, 0, 0, 0, 1])
    assert m.compute() == pytest.approx(0.0, abs=1e-12)
    m.reset()
    m.update(np.array([[1.0, 0.0, 0.0]] * 3), [1, 2, 1])  # confidently wrong
    assert m.compute() == pytest.approx(1.0)
    m.reset()
    with pytest.warns(UserWarning):
        assert math.isnan(m.compute())


# ---------------------------------------------------------------- PixelAUROC


def test_pixel_auroc_matches_sklearn_on_random_maps(rng):
    m = PixelAUROC()
    all_s, all_t = [], []
    for i in range(6):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        mask = rng.random((h, w)) < 0.2
        amap = np.clip(0.4 * mask + rng.random((h, w)) * 0.7, 0, 1)
        if i % 2:  # (1, H, W) torch input is accepted too
            m.update(torch.from_numpy(amap)[None], torch.from_numpy(mask)[None])
        else:
            m.update(amap, mask.astype(np.uint8))
        all_s.append(amap.ravel())
        all_t.append(mask.ravel())
    expected = roc_auc_score(np.concatenate(all_t), np.concatenate(all_s))
    assert abs(m.compute() - expected) < 1e-4


def test_pixel_auroc_hand_cases():
    mask = np.array([[0, 0], [1, 1]])
    m = PixelAUROC()
    m.update(np.array([[0.1, 0.2], [0.8, 0.9]]), mask)
    assert m.compute() == 1.0
    m.reset()
    m.update(np.array([[0.9, 0.8], [0.2, 0.1]]), mask)
    assert m.compute() == 0.0
    m.reset()
    m.update(np.full((2, 2), 0.3), mask)  # all ties
    assert m.compute() == 0.5


def test_pixel_auroc_shape_mismatch_names_both_shapes():
    m = PixelAUROC()
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        m.update(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="one image"):
        m.update(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))  # a batch is not one image


def test_pixel_auroc_undefined_without_both_pixel_classes():
    m = PixelAUROC()
    m.update(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)))
    with pytest.warns(UserWarning, match="pixel AUROC undefined"):
        assert math.isnan(m.compute())


def test_pixel_auroc_memory_does_not_grow(rng):
    m = PixelAUROC()
    amap = rng.random((64, 64))
    mask = rng.random((64, 64)) < 0.3
    m.update(amap, mask)
    nbytes = m.state_nbytes
    tracemalloc.start()
    try:
        m.update(amap, mask)
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(60):
            m.update(amap, mask)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.state_nbytes == nbytes
    # 60 more images of 4096 pixels would be > 1.9 MB if scores were kept; allow small noise.
    assert after - before < 64 * 1024
    assert int(m._pos.sum() + m._neg.sum()) == 62 * 64 * 64


# ---------------------------------------------------------------- Dice / IoU


def test_dice_iou_hand_case():
    gt = np.array([[1, 1, 0, 0]])
    amap = np.array([[0.9, 0.4, 0.6, 0.1]])  # at 0.5: TP=1, FP=1, FN=1
    d = DiceIoU(threshold=0.5)
    d.update(amap, gt)
    r = d.compute()
    assert r["dice"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["dice_per_image"] == pytest.approx(0.5)
    assert math.isnan(r["fp_pixel_rate_empty"])
    # threshold semantics: map >= threshold is positive
    d2 = DiceIoU(threshold=0.4)
    d2.update(amap, gt)
    assert d2.compute()["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_dice_iou_global_per_image_and_empty_images_match_monai(rng):
    from monai.metrics import compute_dice, compute_iou

    d = DiceIoU(threshold=0.5)
    per_dice, per_iou, tp_sum, pred_sum, gt_sum, union_sum = [], [], 0, 0, 0, 0
    fp_empty, px_empty = 0, 0
    for i in range(8):
        h, w = int(rng.integers(10, 30)), int(rng.integers(10, 30))
        gt = (rng.random((h, w)) < 0.3) if i % 3 else np.zeros((h, w), bool)
        amap = np.clip(0.35 * gt + rng.random((h, w)) * 0.6, 0, 1)
        d.update(amap, gt)
        pred = amap >= 0.5
        tp_sum += (pred & gt).sum()
        pred_sum += pred.sum()
        gt_sum += gt.sum()
        union_sum += (pred | gt).sum()
        if gt.any():
            yp = torch.from_numpy(pred)[None, None].float()
            yt = torch.from_numpy(gt)[None, None].float()
            per_dice.append(compute_dice(yp, yt, include_background=True).item())
            per_iou.append(compute_iou(yp, yt, include_background=True).item())
        else:
            fp_empty += pred.sum()
            px_empty += pred.size
    r = d.compute()
    assert r["dice"] == pytest.approx(2 * tp_sum / (pred_sum + gt_sum))
    assert r["iou"] == pytest.approx(tp_sum / union_sum)
    assert r["dice_per_image"] == pytest.approx(np.mean(per_dice))
    assert r["iou_per_image"] == pytest.approx(np.mean(per_iou))
    assert r["fp_pixel_rate_empty"] == pytest.approx(fp_empty / px_empty)
    assert r["n_lesion_images"] == len(per_dice) and r["n_empty_images"] == 8 - len(per_dice)


def test_dice_iou_nothing_to_score_is_nan():
    d = DiceIoU(0.5)
    d.update(np.zeros((4, 4)), np.zeros((4, 4)))
    r = d.compute()
    assert math.isnan(r["dice"]) and math.isnan(r["dice_per_image"])
    assert r["fp_pixel_rate_empty"] == 0.0


# ---------------------------------------------------------------- best_threshold


def test_best_threshold_matches_brute_force(rng):
    maps, masks = [], []
    for _ in range(5):
        gt = rng.random((24, 24)) < 0.25
        masks.append(gt)
        maps.append(np.clip(0.5 * gt + rng.random((24, 24)) * 0.5, 0, 1))
    cand = np.linspace(0.05, 0.95, 19)
    thr, dice = dice_threshold_curve(maps, masks, cand)
    for t, dv in zip(thr, dice):
        ref = DiceIoU(float(t))
        for m, g in zip(maps, masks):
            ref.update(m, g)
        assert dv == pytest.approx(ref.compute()["dice"])
    best = best_threshold(maps, masks, cand)
    assert best == pytest.approx(cand[int(np.argmax(dice))])
    assert 0.3 < best < 0.8  # separable data: best cut lies between the two score ranges


def test_best_threshold_needs_lesions():
    with pytest.raises(ValueError, match="lesion"):
        best_threshold([np.zeros((3, 3))], [np.zeros((3, 3))])


# ---------------------------------------------------------------- summaries


def test_summarize_over_seeds_mean_std_nan_and_missing():
    runs = [
        {"auroc": 0.8, "dice": 0.5, "notes": ["x"], "flag": True},
        {"auroc": 0.9, "dice": float("nan")},
        {"auroc": 0.7},
    ]
    s = summarize_over_seeds(runs)
    assert set(s) == {"auroc", "dice"}  # lists and booleans are skipped
    assert s["auroc"]["mean"] == pytest.approx(0.8)
    assert s["auroc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.7], ddof=1))
    assert s["auroc"]["n"] == 3 and s["auroc"]["values"] == [0.8, 0.9, 0.7]
    assert s["dice"]["n"] == 1 and s["dice"]["std"] == 0.0 and s["dice"]["mean"] == 0.5
    assert len(s["dice"]["values"]) == 3 and math.isnan(s["dice"]["values"][2])
    assert format_mean_std(s["auroc"]) == "0.800 ± 0.100"
    assert format_mean_std(s["dice"], digits=2, show_n=True) == "0.50 ± 0.00 (n=1)"


def test_summarize_all_nan():
    s = summarize_over_seeds([{"a": float("nan")}, {"a": float("nan")}])
    assert s["a"]["n"] == 0 and math.isnan(s["a"]["mean"]) and math.isnan(s["a"]["std"])
    assert format_mean_std(s["a"]) == "nan"


# ---------------------------------------------------------------- evaluator


def _batch(rng: np.random.Generator, b: int):
    t = rng.integers(0, 3, b)
    p = _probs(rng, b)
    s = (t > 0) * 0.3 + rng.random(b)
    maps, masks = [], []
    for ti in t:
        h, w = int(rng.integers(16, 40)), int(rng.integers(16, 40))
        gt = (rng.random((h, w)) < 0.2) & (ti != 0)
        masks.append(gt)
        maps.append(np.clip(0.4 * gt + 0.6 * rng.random((h, w)), 0, 1))
    return p, s, t, maps, masks


def test_evaluator_matches_individual_metrics(rng):
    ev = UltraADEvaluator(threshold=0.5)
    batches = [_batch(rng, 10) for _ in range(3)]
    for p, s, t, maps, masks in batches:
        ev.update(torch.from_numpy(p), s, t, maps, masks)
    r = ev.compute()
    p = np.concatenate([b[0] for b in batches])
    s = np.concatenate([b[1] for b in batches])
    t = np.concatenate([b[2] for b in batches])
    maps = [m for b in batches for m in b[3]]
    masks = [g for b in batches for g in b[4]]

    assert r["image_auroc"] == pytest.approx(roc_auc_score(t != 0, s))
    assert r["cls_auroc_macro"] == pytest.approx(roc_auc_score(t, p, multi_class="ovr"))
    ab = t > 0
    assert r["benign_malignant_auroc"] == pytest.approx(roc_auc_score(t[ab] == 2, p[ab, 2] / (p[ab, 1] + p[ab, 2])))
    assert r["accuracy"] == pytest.approx(accuracy_score(t, p.argmax(1)))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p.argmax(1)))
    assert r["ece"] == pytest.approx(_ece_reference(p, t, 15))
    px = roc_auc_score(np.concatenate([g.ravel() for g in masks]), np.concatenate([m.ravel() for m in maps]))
    assert abs(r["pixel_auroc"] - px) < 1e-4
    ref = DiceIoU(0.5)
    for m, g in zip(maps, masks):
        ref.update(m, g)
    seg = ref.compute()
    for key in ("dice", "iou", "dice_per_image"):
        assert r[key] == pytest.approx(seg[key])
    assert r["n_images"] == 30 and r["n_images_with_mask"] == 30
    assert sum(r[f"n_{c}"] for c in CLASS_NAMES) == 30
    assert r["notes"] == []


def test_evaluator_nan_metrics_come_with_notes(rng):
    ev = UltraADEvaluator()
    p = _probs(rng, 4)
    ev.update(p, rng.random(4), [1, 2, 1, 2], maps=None, masks=None)  # no normal images, no maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reasons go to notes, not to warnings
        r = ev.compute()
    assert math.isnan(r["image_auroc"]) and math.isnan(r["pixel_auroc"]) and math.isnan(r["dice"])
    assert not math.isnan(r["benign_malignant_auroc"])
    assert any(n.startswith("image_auroc") for n in r["notes"])
    assert any("pixel_auroc" in n and "dice" in n for n in r["notes"])
    assert r["n_normal"] == 0 and r["n_benign"] == 2 and r["n_malignant"] == 2


def test_evaluator_batched_maps_partial_masks_and_atomic_update(rng):
    ev = UltraADEvaluator()
    maps = torch.rand(3, 1, 8, 8)
    masks = [np.ones((1, 8, 8)), None, np.zeros((8, 8))]
    ev.update(_probs(rng, 3), [0.1, 0.9, 0.2], [0, 1, 0], maps, masks)
    assert ev.compute()["n_images_with_mask"] == 2
    # a malformed batch raises and leaves the accumulated state untouched
    with pytest.raises(ValueError, match="does not match"):
        ev.update(_probs(rng, 1), [0.5], [2], [np.zeros((8, 8))], [np.zeros((9, 9))])
    r = ev.compute()
    assert r["n_images"] == 3 and r["n_images_with_mask"] == 2


def test_bfloat16_and_cuda_free_torch_inputs_are_accepted():
    m = BinaryAUROC()
    m.update(torch.tensor([0.1, 0.9], dtype=torch.bfloat16), torch.tensor([0, 1]))
    assert m.compute() == 1.0


def test_best_threshold_skips_images_without_mask(rng):
    gt = rng.random((16, 16)) < 0.3
    amap = np.where(gt, 0.8, 0.2)
    assert best_threshold([amap, rng.random((5, 5))], [gt, None]) == pytest.approx(0.21)
