"""The benchmark protocol: one backbone, one feature cache, every method on identical shots, splits and metrics.

Per (k, seed): a patient-disjoint few-shot split of the training dataset (shots from training patients, a
validation set from the remaining training patients, a test set fixed by ``split_seed``). Each method is fitted on
the shots, chooses its hyperparameters and its heatmap threshold on the validation images only, and is then scored
on every target (the in-domain test patients, and whole unseen datasets). One JSON file per (method, k, seed) cell
is written atomically as soon as it is done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.methods import FitData, Method, Prediction
from benchmarks.shortcut_audit import AuditData, ShortcutAudit
from monai_ultraad import engine
from monai_ultraad.data import make_fewshot_split
from monai_ultraad.data.transforms import map_to_original
from monai_ultraad.engine import EvalSample
from monai_ultraad.errors import InputDataError
from monai_ultraad.features import FeatureStore
from monai_ultraad.io_utils import atomic_write_json
from monai_ultraad.metrics import UltraADEvaluator
from monai_ultraad.networks import ClipBackbone, VisualFeatures
from monai_ultraad.selection import validation_threshold

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image_auroc",)
CLASS_KEYS = ("cls_auroc_macro", "benign_malignant_auroc", "accuracy", "balanced_accuracy", "ece")
PIXEL_KEYS = ("pixel_auroc", "dice", "iou", "dice_per_image", "iou_per_image", "fp_pixel_rate_empty")
#: Side of the thumbnails kept for the heatmap grid figure.
THUMB = 96


@dataclass
class Target:
    """An evaluation set: its name, items and ground truth (loaded once, shared by all cells)."""

    name: str
    items: list[dict]
    samples: dict[str, EvalSample]
    description: str
    features: VisualFeatures | None = None  # held in memory when small enough, else streamed from the cache
    audit: AuditData | None = None  # subsets (marks / Doppler) and detected marks: the shortcut audit runs when set


def load_target(name: str, items: Sequence[dict], description: str, store: FeatureStore | None = None,
                memory_limit_gb: float = 0.0) -> Target:
    """Ground truth of a target, and its cached features in memory when they fit ``memory_limit_gb``
    (every cell reads them again, so holding them saves one cache read per image per cell)."""
    samples = engine.load_eval_samples(items, progress=True, desc=f"ground truth ({name})")
    target = Target(name, list(items), {str(s.item["id"]): s for s in samples}, description)
    if store is not None and items:
        probe = store.get(list(items[:1]))
        nbytes = (probe.cls_token.numel() + probe.patch_tokens.numel()) * probe.patch_tokens.element_size()
        if nbytes * len(items) <= memory_limit_gb * 2**30:
            parts = [f for _, f in store.iter_batches(items, batch_size=64)]
            target.features = VisualFeatures(torch.cat([p.cls_token for p in parts]),
                                             torch.cat([p.patch_tokens for p in parts]))
    return target


def target_batches(target: Target, store: FeatureStore, batch_size: int):
    """(items, features) batches of a target, from memory or streamed from the feature cache."""
    if target.features is None:
        yield from store.iter_batches(target.items, batch_size=batch_size, desc=f"features ({target.name})")
        return
    for start in range(0, len(target.items), batch_size):
        stop = start + batch_size
        yield target.items[start:stop], VisualFeatures(target.features.cls_token[start:stop],
                                                       target.features.patch_tokens[start:stop])


def stratified_subset(items: Sequence[dict], max_images: int | None, seed: int, keys: Sequence[str]) -> list[dict]:
    """At most ``max_images`` items, drawn per stratum (e.g. class x scanner) in proportion to its size."""
    if not max_images or len(items) <= max_images:
        return list(items)
    rng = np.random.default_rng(seed)
    strata: dict[tuple, list[dict]] = {}
    for it in items:
        strata.setdefault(tuple(str(it.get(k, "")) for k in keys), []).append(it)
    chosen: list[dict] = []
    for key in sorted(strata):
        group = strata[key]
        n = max(1, round(max_images * len(group) / len(items)))
        chosen.extend(group[i] for i in sorted(rng.choice(len(group), size=min(n, len(group)), replace=False)))
    return sorted(chosen, key=lambda it: str(it["id"]))


def fit_data(split, store: FeatureStore, backbone: ClipBackbone, seed: int) -> FitData:
    shots = store.get(split.shots, desc="features (shots)")
    if not split.validation:
        raise InputDataError("the few-shot split left no validation images: thresholds and epochs need them")
    val_batches = engine.validation_batches(split.validation, store)
    val = VisualFeatures(torch.cat([f.cls_token for f, _ in val_batches]),
                         torch.cat([f.patch_tokens for f, _ in val_batches]))
    labels = torch.tensor([int(it["label"]) for it in split.shots])
    masks = engine.training_masks(split.shots, backbone.image_size, backbone.mean, backbone.std)
    return FitData(
        shots=VisualFeatures(shots.cls_token.float(), shots.patch_tokens.float()),
        labels=labels,
        masks=masks,
        val_features=VisualFeatures(val.cls_token.float(), val.patch_tokens.float()),
        val_labels=torch.tensor([int(it["label"]) for it in split.validation]),
        shot_items=list(split.shots),
        val_items=list(split.validation),
        val_batches=val_batches,
        store=store,
        seed=seed,
    )


def _as_evaluator_inputs(pred: Prediction, n_classes: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and scores in the evaluator's shape. What a method does not give gets a placeholder whose
    metrics are blanked afterwards (reported as not applicable, never as a number)."""
    score = pred.anomaly_score.float() if pred.anomaly_score is not None else torch.zeros(batch)
    if pred.class_probs is not None:
        probs = pred.class_probs.float()
    else:
        s = score.clamp(0, 1)
        probs = torch.cat([(1 - s).unsqueeze(1), (s / (n_classes - 1)).unsqueeze(1).expand(-1, n_classes - 1)], 1)
    return probs.numpy(), score.numpy()


def predict_batches(
    method: Method, batches: Iterable[tuple[VisualFeatures, Sequence[EvalSample]]], size: int
) -> Iterable[tuple[Prediction, list[np.ndarray] | None, Sequence[EvalSample]]]:
    """Run the method and map its heatmaps back onto each image's original geometry."""
    for features, samples in batches:
        if getattr(method, "needs_images", False):  # adapters inside the tower (MVFA): cached taps do not apply
            pred = method.predict_items([s.item for s in samples])
        else:
            pred = method.predict(VisualFeatures(features.cls_token.float(), features.patch_tokens.float()))
        maps = None
        if pred.anomaly_map is not None:
            maps = [map_to_original(pred.anomaly_map[i, 0].float(), s.size, size).numpy()
                    for i, s in enumerate(samples)]
        yield pred, maps, samples


def choose_threshold(method: Method, data: FitData, size: int) -> tuple[float, str]:
    """The heatmap threshold of :func:`~monai_ultraad.selection.validation_threshold` (validation images only;
    the one rule the package's own training uses), and how it was chosen."""
    maps, masks = [], []
    for pred, m, samples in predict_batches(method, data.val_batches, size):
        if m is None:
            return float("nan"), "no heatmap"
        maps.extend(m)
        masks.extend(s.mask for s in samples)
    threshold, notes = validation_threshold(maps, masks)
    return threshold, notes[0] if notes else "validation Dice"


def _thumb(x: np.ndarray) -> np.ndarray:
    t = torch.as_tensor(x, dtype=torch.float32)[None, None]
    return (F.interpolate(t, size=(THUMB, THUMB), mode="bilinear", align_corners=False)[0, 0].numpy() * 255).astype(
        np.uint8
    )


def evaluate_target(
    method: Method, target: Target, store: FeatureStore, threshold: float, batch_size: int, keep_ids: set[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Metrics, per-image scores (for ROC curves) and thumbnails of ``keep_ids`` on one target."""
    size = method.backbone.image_size
    evaluator = UltraADEvaluator(threshold=0.5 if math.isnan(threshold) else threshold, class_names=method.class_names)
    per_image: dict[str, list] = {"id": [], "label": [], "anomaly_score": [], "class_probs": []}
    thumbs: dict[str, np.ndarray] = {}

    def batches():
        for chunk, feats in target_batches(target, store, batch_size):
            yield feats, [target.samples[str(it["id"])] for it in chunk]

    audit = ShortcutAudit(target.audit, evaluator.threshold, method.class_names) if target.audit else None
    has_map = has_score = has_probs = False
    for pred, maps, samples in predict_batches(method, batches(), size):
        has_map, has_score, has_probs = maps is not None, pred.anomaly_score is not None, pred.class_probs is not None
        probs, scores = _as_evaluator_inputs(pred, len(method.class_names), len(samples))
        labels = np.array([s.label for s in samples])
        evaluator.update(probs, scores, labels, maps, [s.mask for s in samples] if maps is not None else None)
        if audit is not None:
            audit.update([str(s.item["id"]) for s in samples], probs, scores, labels, maps, [s.mask for s in samples])
        for i, s in enumerate(samples):
            sid = str(s.item["id"])
            per_image["id"].append(sid)
            per_image["label"].append(int(labels[i]))
            per_image["anomaly_score"].append(round(float(scores[i]), 5) if has_score else None)
            per_image["class_probs"].append([round(float(p), 5) for p in probs[i]] if has_probs else None)
            if maps is not None and sid in keep_ids:
                thumbs[sid] = _thumb(maps[i])
    metrics = evaluator.compute()
    not_applicable = []
    if not has_score:
        not_applicable += list(IMAGE_KEYS)
    if not has_probs:
        not_applicable += list(CLASS_KEYS)
    if not has_map:
        not_applicable += list(PIXEL_KEYS)
    for key in not_applicable:
        metrics[key] = None
    metrics["not_applicable"] = not_applicable
    if audit is not None:
        metrics["shortcut_audit"] = audit.compute(not_applicable)
    return metrics, per_image, thumbs


def run_cell(
    method: Method,
    data: FitData,
    targets: Sequence[Target],
    store: FeatureStore,
    batch_size: int,
    keep_ids: set[str],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit one method on one split and score it on every target."""
    t0 = time.perf_counter()
    chosen = method.fit(data)
    fit_seconds = time.perf_counter() - t0
    threshold, how = choose_threshold(method, data, method.backbone.image_size)
    record: dict[str, Any] = {"fit": chosen, "fit_seconds": round(fit_seconds, 3), "threshold": threshold,
                              "threshold_from": how, "targets": {}}
    thumbs: dict[str, np.ndarray] = {}
    for target in targets:
        t1 = time.perf_counter()
        metrics, per_image, kept = evaluate_target(method, target, store, threshold, batch_size, keep_ids)
        metrics["seconds_per_image"] = (time.perf_counter() - t1) / max(len(target.items), 1)
        record["targets"][target.name] = {"metrics": metrics, "per_image": per_image}
        thumbs.update(kept)
    return record, thumbs


def write_cell(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record, nan_as_null=True)


def make_split(items: Sequence[dict], k: int, seed: int, cfg: dict[str, Any]):
    return make_fewshot_split(
        items, k=k, seed=seed, split_seed=int(cfg["split_seed"]), test_fraction=float(cfg["test_fraction"]),
        max_val_per_class=cfg.get("max_val_per_class"),
    )
