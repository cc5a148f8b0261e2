"""Fit / evaluate / predict / checkpoints for MVFA (:class:`monai_ultraad.networks.mvfa.MVFA`).

MVFA's adapters sit inside the image tower, so it cannot run on the frozen-feature cache that UltraAD uses: every
training step runs the tower from the first adapter on. What *is* adapter-independent -- the residual stream after
the first adapted block -- is computed once per (image, augmented view) and kept (:class:`PrefixCache`), so each
step only pays for the remaining blocks. The views are deterministic, so the cache is exact.

Training follows the authors' ``train_few.py``: 11 views per shot (abnormal shots with their masks, normal shots
with empty masks), batch size 1, shuffled, Adam with betas (0.5, 0.999), lr 1e-3, 50 epochs; after each epoch the
few-shot memory is rebuilt from the normal shots' views. Unlike their code (which keeps the epoch that scores best
on the TEST set), the epoch is chosen on the validation images, whose maps also give the min-max statistics of the
branches and the heatmap threshold. Zero-shot mode (``train_zero.py``) trains on a source dataset without memory
and without augmentation (lr 1e-4) and is scored on an unseen dataset.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from monai_ultraad import checkpoint, engine
from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.data.transforms import apply_pipeline, map_to_original, ultraad_preprocessing
from monai_ultraad.errors import InputDataError, WeightsError
from monai_ultraad.features import file_sha256
from monai_ultraad.io_utils import atomic_write_json
from monai_ultraad.metrics import UltraADEvaluator
from monai_ultraad.networks.backbone import ClipBackbone
from monai_ultraad.networks.mvfa import MVFA, N_VIEWS, MVFAOutput, mvfa_loss, view
from monai_ultraad.selection import validation_threshold

logger = logging.getLogger(__name__)

#: Class metrics MVFA does not produce (binary normal / abnormal): reported as not applicable.
NOT_APPLICABLE = ("cls_auroc_macro", "benign_malignant_auroc", "accuracy", "balanced_accuracy", "ece")


@dataclass
class MVFAConfig:
    """MVFA training hyperparameters (the authors' defaults; recorded in the checkpoint)."""

    epochs: int = 50
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    views: int = N_VIEWS
    batch_size: int = 1
    seed: int = 0
    val_every: int = 1
    mode: str = "segmentation"  # or "zero_shot"; "detection" is chosen automatically when no shot has a mask
    det_loss: str = "bce"

    @classmethod
    def zero_shot(cls, **overrides: Any) -> MVFAConfig:
        """``train_zero.py``'s defaults: no augmentation, lr 1e-4, no memory."""
        return cls(**{"lr": 1e-4, "views": 1, "mode": "zero_shot", **overrides})


class PrefixCache:
    """Residual streams entering the adapted part of the tower, per (image content, view), in memory.

    Keyed by the backbone's feature key, the number of cached blocks, the image's sha256 and the view index, so an
    entry can never be stale; shared by every fit of a process (validation images recur over seeds and k).
    """

    def __init__(self, model: MVFA, batch_size: int = 8) -> None:
        self.model, self.batch_size = model, batch_size
        self.key = json.dumps([model.backbone.feature_key, model.prefix_blocks], sort_keys=True)
        self.pre = ultraad_preprocessing(model.image_size, model.backbone.mean, model.backbone.std, with_mask=True)
        self._store: dict[tuple, torch.Tensor] = {}
        self.hits = self.misses = 0

    def images(self, items: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (B, 3, S, S) images and (B, 1, S, S) masks (zeros where an image has none)."""
        data = [apply_pipeline(self.pre, it) for it in items]
        as_t = lambda v: torch.as_tensor(v.as_tensor() if hasattr(v, "as_tensor") else v).float()
        return torch.stack([as_t(d["image"]) for d in data]), torch.stack([as_t(d["mask"]) for d in data])

    def streams(self, items: Sequence[dict], views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(views * B, 1 + N, W) streams and (views * B, 1, S, S) view masks, view-major (the authors' order)."""
        keys = [(self.key, file_sha256(it["image"]), v) for v in range(views) for it in items]
        todo = [i for i in range(len(items)) if any((self.key, file_sha256(items[i]["image"]), v) not in self._store
                                                   for v in range(views))]
        masks_by_view: dict[int, torch.Tensor] = {}
        images, masks = self.images(items)
        for v in range(views):
            masks_by_view[v] = view(masks, v)
        self.misses += len(todo) * views
        self.hits += (len(items) - len(todo)) * views
        for v in range(views):
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start:start + self.batch_size]
                out = self.model.prefix(view(images[idx], v)).float().cpu()
                for j, i in enumerate(idx):
                    self._store[keys[v * len(items) + i]] = out[j]
        device = next(self.model.backbone.parameters()).device
        streams = torch.stack([self._store[k] for k in keys]).to(device)
        return streams, torch.cat([masks_by_view[v] for v in range(views)])


def build_model(backbone: ClipBackbone, seed: int = 0, mode: str = "segmentation", det_loss: str = "bce",
                **kwargs: Any) -> MVFA:
    return MVFA(backbone, mode=mode, det_loss=det_loss, init_seed=seed, **kwargs)


def _raw_in_batches(model: MVFA, streams: torch.Tensor, batch_size: int = 8) -> list[dict]:
    raws = []
    for start in range(0, streams.shape[0], batch_size):
        with torch.no_grad():
            raws.append(model.raw_branches(model.adapted_tokens(streams[start:start + batch_size])))
    return raws


def _validation_metrics(model: MVFA, raws: list[dict], labels: np.ndarray, masks: torch.Tensor) -> dict[str, float]:
    """Image and pixel AUROC of the validation images at the model resolution, with the statistics just set."""
    from sklearn.metrics import roc_auc_score

    model.calibrate(raws)
    maps, scores = [], []
    for raw in raws:
        out = _fuse(model, raw)
        maps.append(out.anomaly_map[:, 0].cpu())
        scores.append(out.anomaly_score.cpu())
    scores_np = torch.cat(scores).numpy()
    binary = (labels != 0).astype(int)
    image = float(roc_auc_score(binary, scores_np)) if 0 < binary.sum() < len(binary) else float("nan")
    gt = (masks[:, 0] > 0.5).numpy().ravel()
    pixel = float(roc_auc_score(gt, torch.cat(maps).numpy().ravel())) if 0 < gt.sum() < gt.size else float("nan")
    return {"image_auroc": image, "pixel_auroc": pixel}


def _fuse(model: MVFA, raw: dict) -> MVFAOutput:
    """:meth:`MVFA.score_tokens` from already computed raw branches."""
    return model.fuse(raw)


def fit(
    model: MVFA,
    shots: Sequence[dict],
    validation: Sequence[dict],
    config: MVFAConfig | None = None,
    cache: PrefixCache | None = None,
    progress: bool = True,
) -> engine.FitResult:
    """Train MVFA on ``shots`` (their views), choose the epoch and the statistics on ``validation``.

    Afterwards ``model`` holds the chosen epoch's adapters, its memory and its validation statistics.
    """
    config = config or MVFAConfig()
    if not shots:
        raise InputDataError("no training shots given")
    if not validation:
        raise InputDataError("MVFA needs validation images: the epoch and the branch statistics come from them")
    generator = engine.seed_everything_local(config.seed)
    cache = cache or PrefixCache(model)
    notes = [RANDOM_WEIGHTS_WARNING] if model.random_weights else []
    t0 = time.perf_counter()
    labels = torch.tensor([0 if int(it["label"]) == 0 else 1 for it in shots])
    streams, masks = cache.streams(shots, config.views)
    view_labels = labels.repeat(config.views)
    has_mask = bool(masks[view_labels == 1].sum() > 0)
    if model.mode == "segmentation" and not has_mask:
        model.mode = "detection"
        notes.append("no lesion mask in the shots: detection mode (BCE only, detection-branch image score)")
    normal_streams = streams[view_labels == 0]
    if model.mode != "zero_shot" and normal_streams.shape[0] == 0:
        raise InputDataError("MVFA's few-shot branch needs at least one normal shot (or use zero-shot mode)")
    val_streams, val_masks = cache.streams(validation, 1)
    val_labels = np.array([int(it["label"]) for it in validation])
    feature_seconds = time.perf_counter() - t0

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    best = (-math.inf, 0, None, {})
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    device = streams.device
    masks, view_labels = masks.to(device), view_labels.to(device)
    for epoch in tqdm(range(1, config.epochs + 1), desc="MVFA training", unit="epoch", disable=not progress):
        start = time.perf_counter()
        model.train()
        losses = []
        for idx in torch.randperm(streams.shape[0], generator=generator).split(config.batch_size):
            idx = idx.to(device)
            parts = mvfa_loss(model, model.adapted_tokens(streams[idx]), masks[idx], view_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            losses.append({k: float(v.detach()) for k, v in parts.items()})
        model.eval()
        epoch_seconds.append(time.perf_counter() - start)
        record: dict[str, Any] = {"epoch": epoch, **{k: float(np.mean([x[k] for x in losses])) for k in losses[0]}}
        if epoch % config.val_every == 0 or epoch == config.epochs:
            model.set_memory(normal_streams if model.mode != "zero_shot" else None)
            metrics = _validation_metrics(model, _raw_in_batches(model, val_streams), val_labels, val_masks)
            vals = [v for v in metrics.values() if not math.isnan(v)]
            score = float(np.mean(vals)) if vals else float("nan")
            record.update({f"val_{k}": v for k, v in metrics.items()}, val_score=score)
            if not math.isnan(score) and score > best[0]:
                best = (score, epoch, copy.deepcopy(model.head_state_dict()), metrics)
        history.append(record)
    if best[2] is None:
        model.set_memory(normal_streams if model.mode != "zero_shot" else None)
        _validation_metrics(model, _raw_in_batches(model, val_streams), val_labels, val_masks)
        best = (float("nan"), config.epochs, model.head_state_dict(), {})
        notes.append("no validation metric available: the last epoch was kept")
    model.load_head_state_dict(best[2])
    model.eval()
    threshold, threshold_notes = choose_threshold(model, validation, cache)
    return engine.FitResult(best[1], threshold, best[3], history, epoch_seconds, feature_seconds,
                            notes + threshold_notes)


def iter_outputs(model: MVFA, items: Sequence[dict], cache: PrefixCache, batch_size: int = 8,
                 keep: bool = False) -> Iterator[tuple[list[dict], MVFAOutput]]:
    """Score ``items`` batch by batch (streams are cached only when ``keep``: validation images recur)."""
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        if keep:
            streams, _ = cache.streams(chunk, 1)
        else:
            images, _ = cache.images(chunk)
            streams = model.prefix(images)
        with torch.no_grad():
            yield chunk, model.score_tokens(model.adapted_tokens(streams))


def choose_threshold(model: MVFA, validation: Sequence[dict], cache: PrefixCache) -> tuple[float, list[str]]:
    """The heatmap threshold of :func:`~monai_ultraad.selection.validation_threshold` for MVFA's validation maps."""
    samples = engine.load_eval_samples(validation)
    maps = []
    for chunk, out in iter_outputs(model, validation, cache, keep=True):
        maps += [map_to_original(out.anomaly_map[i, 0].cpu(), s.size, model.image_size).numpy()
                 for i, s in enumerate(samples[len(maps):len(maps) + len(chunk)])]
    return validation_threshold(maps, [s.mask for s in samples])


def placeholder_probs(score: np.ndarray) -> np.ndarray:
    """(B, 3) stand-in class probabilities for the evaluator (MVFA is binary; their metrics are blanked)."""
    s = np.clip(score, 0.0, 1.0)
    return np.stack([1 - s, s / 2, s / 2], axis=1)


def evaluate(model: MVFA, items: Sequence[dict], threshold: float, cache: PrefixCache | None = None,
             batch_size: int = 8, progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Image and pixel metrics of ``model`` on ``items`` (class metrics: not applicable, None)."""
    if not items:
        raise InputDataError("nothing to evaluate: the evaluation set is empty")
    cache = cache or PrefixCache(model)
    evaluator = UltraADEvaluator(threshold=threshold)
    predictions = []
    bar = tqdm(total=len(items), desc="evaluate MVFA", unit="img", disable=not progress)
    for chunk, out in iter_outputs(model, items, cache, batch_size):
        samples = engine.load_eval_samples(chunk)
        maps = [map_to_original(out.anomaly_map[i, 0].cpu(), s.size, model.image_size).numpy()
                for i, s in enumerate(samples)]
        scores = out.anomaly_score.cpu().numpy()
        evaluator.update(placeholder_probs(scores), scores, np.array([s.label for s in samples]), maps,
                         [s.mask for s in samples])
        predictions += [{"id": str(s.item.get("id")), "label": engine.CLASS_NAMES[s.label],
                         "anomaly_score": float(scores[i])} for i, s in enumerate(samples)]
        bar.update(len(chunk))
    bar.close()
    metrics = evaluator.compute()
    for key in NOT_APPLICABLE:
        metrics[key] = None
    metrics["not_applicable"] = list(NOT_APPLICABLE)
    metrics["random_weights"] = model.random_weights
    return metrics, predictions


# ---------------------------------------------------------------------------------------------------- checkpoints
def is_mvfa_checkpoint(path: str | os.PathLike) -> bool:
    return checkpoint.read_checkpoint(path)["model"].get("kind") == "mvfa"


def load_checkpoint(path: str | os.PathLike, *, pretrained: str | None = None, allow_random_init: bool = False,
                    device: str | torch.device = "cpu") -> tuple[MVFA, dict[str, Any]]:
    """Rebuild a trained MVFA (adapters, memory, statistics) on the backbone it was trained on."""
    payload = checkpoint.read_checkpoint(path)
    described = payload["model"]
    if described.get("kind") != "mvfa":
        raise WeightsError(f"{Path(path).name} is not an MVFA checkpoint")
    cfg, trained = described["config"], described["backbone"]
    source = pretrained if pretrained is not None else trained.get("pretrained")
    if trained.get("random_weights") and pretrained is None:
        if not allow_random_init:
            raise WeightsError(f"checkpoint {Path(path).name} was trained on a randomly initialised backbone; loading "
                               "it needs allow_random_init=True (and its outputs are not meaningful)")
        source = None
    seed = str(trained.get("weights_id", "")).rsplit("seed", 1)[-1] if trained.get("random_weights") else "0"
    backbone = ClipBackbone(cfg["backbone"], source, cfg["feature_layers"], allow_random_init=allow_random_init,
                            init_seed=int(seed) if seed.isdigit() else 0)
    if backbone.weights_id != trained.get("weights_id"):
        raise WeightsError(f"checkpoint {Path(path).name} was trained with backbone weights {trained.get('weights_id')}, "
                           f"but the loaded backbone has {backbone.weights_id}")
    model = MVFA(backbone, object_name=cfg["object_name"], mode=cfg["mode"], det_loss=cfg["det_loss"],
                 init_seed=int(cfg["init_seed"]))
    model.load_head_state_dict(payload["head_state"])
    return model.to(device).eval(), payload


def predict_images(model: MVFA, paths: Sequence[Path], output_dir: Path, threshold: float,
                   progress: bool = True) -> list[dict]:
    """Per image ``<stem>_heatmap.png`` (overlay, contour at the validation threshold) and ``<stem>.json``."""
    from monai_ultraad.data.transforms import load_image_array
    from monai_ultraad.prediction_files import output_stem
    from monai_ultraad.visualize import save_overlay_png

    stems = [output_stem(p) for p in paths]
    if len(set(stems)) != len(stems):
        raise InputDataError("two input images share a file name; their outputs would overwrite each other")
    pre = ultraad_preprocessing(model.image_size, model.backbone.mean, model.backbone.std, with_mask=False)
    records = []
    for path, stem in tqdm(list(zip(paths, stems)), desc="predict MVFA", unit="img", disable=not progress):
        data = apply_pipeline(pre, {"image": str(path)})
        image = data["image"]
        image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)[None]
        out = model.score(image)
        original = load_image_array(path)
        heatmap = map_to_original(out.anomaly_map[0, 0].cpu(), original.shape[:2], model.image_size).numpy()
        score = float(out.anomaly_score[0])
        caption = [f"MVFA anomaly score {score:.3f} (max of the fused map)", f"heatmap threshold {threshold:.2f}"]
        save_overlay_png(output_dir / f"{stem}_heatmap.png", original, heatmap, caption, threshold=threshold,
                         random_weights=model.random_weights)
        record = {"image": Path(path).name, "model": "MVFA", "anomaly_score": score, "heatmap_threshold": threshold,
                  "lesion_area_fraction": float((heatmap >= threshold).mean()), "heatmap_max": float(heatmap.max()),
                  "backbone": model.backbone.description, "random_weights": model.random_weights}
        if model.random_weights:
            record["warning"] = RANDOM_WEIGHTS_WARNING
        atomic_write_json(output_dir / f"{stem}.json", record)
        records.append(record)
    return records


def fewshot_run(items: Sequence[dict], split, backbone: ClipBackbone, config: MVFAConfig, output_dir: Path,
                cache: PrefixCache | None = None, extra: dict | None = None, progress: bool = True,
                test_items: Sequence[dict] | None = None) -> dict[str, Any]:
    """One seed of ``ultraad fewshot --model mvfa``: fit, test, write model.pt / metrics.json / predictions.json."""
    model = build_model(backbone, seed=config.seed, mode=config.mode, det_loss=config.det_loss)
    cache = cache or PrefixCache(model)
    cache.model = model
    result = fit(model, split.shots, split.validation, config, cache, progress)
    tests = list(split.test if test_items is None else test_items)
    metrics, predictions = evaluate(model, tests, result.threshold, cache, progress=progress)
    metrics.update(seed=config.seed, best_epoch=result.best_epoch, n_shots=len(split.shots),
                   n_validation=len(split.validation),
                   epoch_seconds_mean=float(np.mean(result.epoch_seconds)) if result.epoch_seconds else float("nan"))
    checkpoint.save_checkpoint(output_dir / "model.pt", model, threshold=result.threshold, train_config=config,
                               split=split.to_dict(), fit_result=result, extra=extra)
    atomic_write_json(output_dir / "metrics.json", {"test": metrics, "validation": result.val_metrics,
                                                    "history": result.history, "notes": result.notes}, nan_as_null=True)
    atomic_write_json(output_dir / "predictions.json", predictions)
    return metrics


def fewshot_cli(data_dir: str, items: Sequence[dict], splits: Sequence[Any], backbone: ClipBackbone,
                configs: Sequence[MVFAConfig], output_dir: Path, fmt: str, progress: bool = True) -> dict[str, Any]:
    """``ultraad fewshot --model mvfa``: one :func:`fewshot_run` per seed, then ``summary.json`` / ``summary.md``."""
    from monai_ultraad.io_utils import atomic_write_text
    from monai_ultraad.metrics import format_mean_std, summarize_over_seeds

    cache = PrefixCache(build_model(backbone, 0, configs[0].mode))  # shared by the seeds: validation images recur
    per_seed = []
    keys = ("image_auroc", "pixel_auroc", "dice", "iou", "epoch_seconds_mean")
    for split, config in zip(splits, configs):
        metrics = fewshot_run(items, split, backbone, config, output_dir / f"seed{config.seed}", cache,
                              {"dataset": Path(data_dir).name, "format": fmt}, progress)
        per_seed.append({k: metrics.get(k) for k in keys})
        print(f"seed {config.seed}: " + ", ".join(f"{k}={metrics.get(k, float('nan')):.3f}" for k in keys))
    summary = summarize_over_seeds(per_seed)
    record = {"model": "MVFA", "mode": configs[0].mode, "dataset": str(data_dir), "seeds": [c.seed for c in configs],
              "config": {k: v for k, v in vars(configs[0]).items() if k != "seed"}, "backbone": backbone.description,
              "random_weights": backbone.random_weights, "summary": summary}
    if backbone.random_weights:
        record["warning"] = RANDOM_WEIGHTS_WARNING
    atomic_write_json(output_dir / "summary.json", record, nan_as_null=True)
    lines = [(f"MVFA ({configs[0].mode}), {len(configs)} seed(s), backbone {backbone.model_name} ({backbone.weights_id}), "
             f"{configs[0].epochs} epochs, {configs[0].views} views per shot"), ""]
    if backbone.random_weights:
        lines += [f"**{RANDOM_WEIGHTS_WARNING}**", ""]
    lines += ["| metric | mean ± std |", "|---|---|"] + [f"| {k} | {format_mean_std(summary[k])} |" for k in keys
                                                         if k in summary]
    atomic_write_text(output_dir / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


__all__ = [
    "MVFAConfig",
    "PrefixCache",
    "build_model",
    "choose_threshold",
    "evaluate",
    "fewshot_cli",
    "fewshot_run",
    "fit",
    "is_mvfa_checkpoint",
    "load_checkpoint",
    "predict_images",
]
