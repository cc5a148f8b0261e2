"""Few-shot fit / evaluate for UltraAD on cached backbone features.

Every surface (CLI, bundle, deploy app, MONAI Label app, benchmarks) calls these functions; none re-implements a
step. Rules kept here, in one place:

* the backbone runs once per image (:class:`~monai_ultraad.features.FeatureStore`);
* model selection (best epoch), the heatmap threshold and the calibration come from the validation images only, by
  the rules of :mod:`monai_ultraad.selection`, never from the test set; :func:`finish_fit` applies them after the
  epochs, here and in the bundle's MONAI handlers alike;
* every stochastic step takes the seed (head initialisation, batch order).

Checkpoints live in :mod:`monai_ultraad.checkpoint`; their functions stay importable from here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

# kept importable from here (listed in __all__) for callers written before checkpoints had their own module
from monai_ultraad.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_head,
    network_from_checkpoint,
    read_checkpoint,
    recorded_test_items,
    save_checkpoint,
    with_checkpoint,
)
from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.data.transforms import (
    LoadLesionMaskd,
    LoadUltrasoundImaged,
    apply_pipeline,
    map_to_original,
    transform_signature,
    ultraad_preprocessing,
)
from monai_ultraad.errors import InputDataError
from monai_ultraad.features import FeatureStore, default_cache_dir
from monai_ultraad.losses import UltraADLoss
from monai_ultraad.metrics import UltraADEvaluator
from monai_ultraad.networks.backbone import ClipBackbone, VisualFeatures
from monai_ultraad.networks.ultraad import UltraAD, UltraADOutput
from monai_ultraad.selection import SELECTION_METRICS, BestEpoch, validation_threshold

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- configs
@dataclass
class TrainConfig:
    """Hyperparameters of few-shot training (all recorded in the checkpoint).

    The paper gives no budget. 20 epochs of AdamW at a constant lr 5e-3 (batch 8) were chosen on the known-answer
    set (``tests/known_answer``: 3 seeds, lr 1e-3 / 5e-3 / 1e-2 / 3e-2, 20-40 epochs): 5e-3 gave the most
    consistent maps (Dice 0.58-0.60, pixel AUROC 0.95) with the class floors met; 1e-3 left the maps short
    (Dice 0.48-0.57), 3e-2 broke the classifier. The CLI, the bundle and MONAI Label use these defaults.
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-3
    weight_decay: float = 1e-4
    seed: int = 0
    seg_weight: float = 1.0
    cls_weight: float = 1.0
    val_every: int = 1
    #: "fp32", or "bf16": the head's forward in bfloat16 autocast (loss, optimiser and weights stay float32).
    #: Measured 1.65x faster k=16 training on a 2-core CPU with AVX512-BF16 (``benchmarks/speed.py``); not
    #: bit-identical to fp32, so it is recorded with the checkpoint. Evaluation and inference always run in float32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)


#: Training precisions understood by :class:`TrainConfig`.
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a training ``precision`` on ``device`` (a no-op for fp32)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu":
        _warn_if_cpu_bf16_is_emulated()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@functools.cache
def _warn_if_cpu_bf16_is_emulated() -> None:
    """Warn once per process (autocast is entered every step) when the CPU has no native bfloat16."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        native = False
    if not native:
        logger.warning("precision bf16: this CPU has no native bfloat16 support, so training will be SLOWER than fp32")


@dataclass
class FewShotBatch:
    """A training batch: cached features, masks at the model resolution, labels and memory slots."""

    features: VisualFeatures
    masks: torch.Tensor  # (B, 1, S, S)
    labels: torch.Tensor  # (B,)
    memory_slots: torch.Tensor  # (B,), index of each shot in the memory bank


class ShotOrder(torch.utils.data.Sampler[int]):
    """The order the shots are trained in: each pass over them is one ``torch.randperm`` from a generator seeded once
    with ``seed``. :func:`fit` and the bundle's training DataLoader both use it, so they see the same batches.
    (``torch.utils.data.RandomSampler`` draws a second, unused permutation per pass, so it cannot stand in.)"""

    def __init__(self, data_source: Sequence[Any], seed: int = 0) -> None:
        self.n = len(data_source)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.generator).tolist()


@dataclass
class EvalSample:
    """What evaluation needs of one image besides its features: ground truth at the original resolution."""

    item: dict
    label: int
    mask: np.ndarray | None  # (H, W) {0, 1}, None when the image has no mask
    size: tuple[int, int]  # original (H, W)


@dataclass
class FitResult:
    """What :func:`fit` learnt and measured."""

    best_epoch: int
    threshold: float
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    feature_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: validation temperature / class bias and the validation ECE and balanced accuracy before and after them
    calibration: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- helpers
def build_store(
    backbone: ClipBackbone,
    cache_dir: str | os.PathLike | None | bool = True,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureStore:
    """A :class:`FeatureStore` with UltraAD's preprocessing for ``backbone``.

    ``cache_dir=True`` uses :func:`~monai_ultraad.features.default_cache_dir`; ``None``/``False`` keeps features in
    memory only.
    """
    if cache_dir is True:
        cache_dir = default_cache_dir()
    elif cache_dir is False:
        cache_dir = None
    pre = ultraad_preprocessing(backbone.image_size, backbone.mean, backbone.std, with_mask=False)
    sig = transform_signature(backbone.image_size, backbone.mean, backbone.std)
    return FeatureStore(backbone, pre, sig, cache_dir=cache_dir, batch_size=batch_size, device=device, progress=progress)


def _ground_truth_loader():
    from monai.transforms import Compose

    return Compose([LoadUltrasoundImaged(keys="image"), LoadLesionMaskd(keys="mask", ref_key="image")])


def load_eval_samples(items: Sequence[dict], progress: bool = False, desc: str = "ground truth") -> list[EvalSample]:
    """Masks at the original image resolution (all-zero for normal images without a mask file)."""
    loader = _ground_truth_loader()
    samples = []
    for item in tqdm(items, desc=desc, disable=not progress, leave=False):
        data = apply_pipeline(loader, item)
        mask = data["mask"]
        mask_np = np.asarray(mask.as_tensor() if hasattr(mask, "as_tensor") else mask)[0] > 0.5
        samples.append(EvalSample(item, int(item["label"]), mask_np.astype(np.uint8), tuple(mask_np.shape)))
    return samples


def training_masks(items: Sequence[dict], image_size: int, mean, std) -> torch.Tensor:
    """(N, 1, S, S) lesion masks at the model resolution (the geometry of the backbone input)."""
    pre = ultraad_preprocessing(image_size, mean, std, with_mask=True)
    masks = []
    for item in items:
        m = apply_pipeline(pre, item)["mask"]
        masks.append(torch.as_tensor(m.as_tensor() if hasattr(m, "as_tensor") else m).float())
    return torch.stack(masks)


def unwrap(model: torch.nn.Module) -> UltraAD:
    """The UltraAD inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def seed_everything_local(seed: int) -> torch.Generator:
    """A torch generator for this run; also seeds torch's global RNG (head initialisation uses it)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def build_model(backbone: ClipBackbone, seed: int = 0, **model_kwargs: Any) -> UltraAD:
    """``UltraAD(backbone, seed=seed, **model_kwargs)``: a fresh head whose parameters are initialised from ``seed``
    (the bundle's ``network_def`` builds the same)."""
    return UltraAD(backbone, seed=seed, **model_kwargs)


# ---------------------------------------------------------------------------------------------------- inference core
@torch.no_grad()
def run_head(
    model: UltraAD, features: VisualFeatures, samples: Sequence[EvalSample], precision: str = "fp32"
) -> tuple[UltraADOutput, list[np.ndarray]]:
    """Head forward + heatmaps mapped back to each image's original geometry (``precision``: see :func:`autocast`)."""
    model = unwrap(model)
    model.eval()
    with autocast(precision, model.memory.class_text.device):
        out = model.forward_features(features)
    maps = [
        map_to_original(out.anomaly_map[i].float().cpu(), s.size, model.image_size).squeeze(0).numpy()
        for i, s in enumerate(samples)
    ]
    return out, maps


def evaluate_features(
    model: UltraAD,
    batches: Iterable[tuple[VisualFeatures, Sequence[EvalSample]]],
    threshold: float = 0.5,
    keep_maps: bool = False,
    precision: str = "fp32",
) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """Score (features, samples) batches; returns metrics, per-image predictions and (optionally) the maps.

    ``precision`` "bf16" runs the head in bfloat16 autocast: :func:`fit` compares its epochs that way when it trains
    in bf16; thresholds, reported metrics and inference always use float32.
    """
    evaluator = UltraADEvaluator(threshold=threshold, class_names=model.class_names)
    predictions: list[dict[str, Any]] = []
    kept: list[np.ndarray] = []
    for features, samples in batches:
        out, maps = run_head(model, features, samples, precision)
        probs = out.class_probs.float().cpu().numpy()
        scores = out.anomaly_score.float().cpu().numpy()
        targets = np.array([s.label for s in samples])
        evaluator.update(probs, scores, targets, maps, [s.mask for s in samples])
        for i, s in enumerate(samples):
            predictions.append(
                {
                    "id": str(s.item.get("id")),
                    "label": model.class_names[s.label],
                    "predicted": model.class_names[int(probs[i].argmax())],
                    "probabilities": {c: float(p) for c, p in zip(model.class_names, probs[i])},
                    "anomaly_score": float(scores[i]),
                }
            )
        if keep_maps:
            kept.extend(maps)
    return evaluator.compute(), predictions, kept


def evaluate(
    model: UltraAD,
    items: Sequence[dict],
    store: FeatureStore,
    threshold: float = 0.5,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``model`` on ``items`` (streamed: memory stays bounded for large test sets)."""
    if not items:
        raise InputDataError("nothing to evaluate: the evaluation set is empty")
    bar = tqdm(total=len(items), desc="evaluate", unit="img", disable=not progress)

    def batches() -> Iterator[tuple[VisualFeatures, list[EvalSample]]]:
        for chunk, feats in store.iter_batches(items, batch_size=batch_size):
            yield feats, load_eval_samples(chunk)
            bar.update(len(chunk))

    metrics, predictions, _ = evaluate_features(model, batches(), threshold=threshold)
    bar.close()
    metrics["random_weights"] = model.random_weights
    return metrics, predictions


# ---------------------------------------------------------------------------------------------------- training
def training_step(
    model: UltraAD,
    batch: FewShotBatch,
    optimizer: torch.optim.Optimizer,
    loss_fn: UltraADLoss,
    precision: str = "fp32",
) -> tuple[UltraADOutput, dict[str, float]]:
    """One optimisation step on a batch of shots (leave-one-out memory); returns the output and loss parts.

    ``precision`` "bf16" runs the forward in bfloat16 autocast; the loss is computed in float32.
    """
    model.train()
    device = unwrap(model).memory.class_text.device
    # through __call__ (not forward_features) so that a DistributedDataParallel wrapper synchronises gradients
    with autocast(precision, device):
        output = model(batch.features, memory_exclude=batch.memory_slots.to(device))
    parts = loss_fn(output, batch.masks, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return output, {k: float(v.detach()) for k, v in parts.items()}


def train_one_epoch(
    model: UltraAD,
    batches: Iterable[FewShotBatch],
    optimizer: torch.optim.Optimizer,
    loss_fn: UltraADLoss,
    precision: str = "fp32",
) -> list[dict[str, float]]:
    """One pass over ``batches``; returns the loss parts of every step."""
    return [training_step(model, batch, optimizer, loss_fn, precision)[1] for batch in batches]


def fit(
    model: UltraAD,
    shots: Sequence[dict],
    validation: Sequence[dict],
    store: FeatureStore,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> FitResult:
    """Few-shot training of the UltraAD head on ``shots``; best epoch and threshold chosen on ``validation``.

    The memory bank is filled with the shots; during training each shot's own memory entry is left out of its
    classification (leave-one-out), otherwise the memory would classify it trivially and the classifier would
    learn nothing. Returns a :class:`FitResult`; ``model`` holds the best epoch's weights afterwards.
    """
    config = config or TrainConfig()
    if not shots:
        raise InputDataError("no training shots given")
    seed_everything_local(config.seed)
    order = ShotOrder(shots, config.seed)
    device = store.device
    model.to(device)
    notes: list[str] = []
    if model.random_weights:
        notes.append(RANDOM_WEIGHTS_WARNING)

    t0 = time.perf_counter()
    features = store.get(shots, desc="features (shots)")
    val_batches = validation_batches(validation, store) if validation else []
    feature_seconds = time.perf_counter() - t0

    labels = torch.tensor([int(it["label"]) for it in shots])
    masks = training_masks(shots, model.image_size, model.backbone.mean, model.backbone.std)
    model.setup_memory(features, labels)
    if config.precision == "bf16":  # cast the cached patch tokens once, not in every step
        features = VisualFeatures(features.cls_token, features.patch_tokens.to(torch.bfloat16))
    slots = torch.arange(len(shots))
    loss_fn = UltraADLoss(seg_weight=config.seg_weight, cls_weight=config.cls_weight)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    best = BestEpoch()
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    bar = tqdm(range(1, config.epochs + 1), desc="few-shot training", unit="epoch", disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        batches = (
            FewShotBatch(
                VisualFeatures(features.cls_token[idx], features.patch_tokens[idx]), masks[idx], labels[idx], slots[idx]
            )
            for idx in torch.tensor(list(order)).split(config.batch_size)
        )
        losses = train_one_epoch(model, batches, optimizer, loss_fn, config.precision)
        epoch_seconds.append(time.perf_counter() - start)
        record: dict[str, Any] = {"epoch": epoch, **{k: float(np.mean([x[k] for x in losses])) for k in losses[0]}}
        if val_batches and (epoch % config.val_every == 0 or epoch == config.epochs):
            metrics, _, _ = evaluate_features(model, val_batches, precision=config.precision)
            score = best.update(epoch, metrics, model)
            record.update({f"val_{k}": metrics.get(k) for k in SELECTION_METRICS}, val_score=score)
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record.get('val_score', float('nan')):.3f}")

    result = finish_fit(model, val_batches, best, config.epochs)
    result.history, result.epoch_seconds, result.feature_seconds = history, epoch_seconds, feature_seconds
    result.notes = notes + result.notes
    return result


def finish_fit(
    model: UltraAD,
    val_batches: Sequence[tuple[VisualFeatures, Sequence[EvalSample]]],
    best: BestEpoch,
    last_epoch: int,
) -> FitResult:
    """After the epochs: restore the best epoch, calibrate the classes and choose the heatmap threshold on the
    VALIDATION images, and score the result on them (the last step of :func:`fit` and of the bundle's training)."""
    best_epoch, notes = best.restore(model, last_epoch)
    calibration, calibration_notes = calibrate(model, val_batches)
    threshold, threshold_notes = choose_threshold(model, val_batches)
    val_metrics = evaluate_features(model, val_batches, threshold=threshold)[0] if val_batches else {}
    return FitResult(best_epoch, threshold, val_metrics, notes=notes + calibration_notes + threshold_notes,
                     calibration=calibration)


def calibrate(
    model: UltraAD, val_batches: Sequence[tuple[VisualFeatures, Sequence[EvalSample]]]
) -> tuple[dict[str, Any], list[str]]:
    """Fit the class-probability temperature and class bias on the VALIDATION images (see
    :mod:`monai_ultraad.calibration`); returns them with the validation ECE and balanced accuracy before / after."""
    from monai_ultraad.calibration import fit_calibration
    from monai_ultraad.metrics import BalancedAccuracy, ExpectedCalibrationError

    model = unwrap(model)
    model.calibration.reset()
    if not val_batches:
        return {}, ["no validation images: class probabilities left uncalibrated"]
    logits = torch.cat([run_head(model, feats, samples)[0].class_logits.float().cpu() for feats, samples in val_batches])
    labels = torch.tensor([s.label for _, samples in val_batches for s in samples])
    if len(torch.unique(labels)) < 2:
        return {}, ["validation images of one class only: class probabilities left uncalibrated"]

    def scores(lg: torch.Tensor) -> dict[str, float]:
        ece, bal = ExpectedCalibrationError(), BalancedAccuracy()
        ece.update(lg.softmax(-1).numpy(), labels.numpy())
        bal.update(lg.softmax(-1).numpy(), labels.numpy())
        return {"ece": float(ece.compute()), "balanced_accuracy": float(bal.compute())}

    temperature, bias = fit_calibration(logits, labels)
    with torch.no_grad():
        model.calibration.temperature.fill_(temperature)
        model.calibration.bias.copy_(bias.to(model.calibration.bias))
    record = {"temperature": temperature, "bias": [float(b) for b in bias], "validation_before": scores(logits),
              "validation_after": scores(logits / temperature + bias)}
    return record, []


def choose_threshold(
    model: UltraAD, val_batches: Sequence[tuple[VisualFeatures, Sequence[EvalSample]]]
) -> tuple[float, list[str]]:
    """The heatmap threshold of :func:`~monai_ultraad.selection.validation_threshold` for ``model``'s maps of the
    VALIDATION images."""
    maps = evaluate_features(model, val_batches, keep_maps=True)[2] if val_batches else []
    return validation_threshold(maps, [s.mask for _, samples in val_batches for s in samples])


def validation_batches(
    items: Sequence[dict], store: FeatureStore, batch_size: int = 32
) -> list[tuple[VisualFeatures, list[EvalSample]]]:
    """Features and ground truth of the validation images, held in memory (they are scored every epoch)."""
    return [(feats, load_eval_samples(chunk)) for chunk, feats in
            store.iter_batches(items, batch_size=batch_size, desc="features (validation)")]


__all__ = [
    "CHECKPOINT_FORMAT",
    "CLASS_NAMES",
    "PRECISIONS",
    "EvalSample",
    "FewShotBatch",
    "FitResult",
    "ShotOrder",
    "TrainConfig",
    "autocast",
    "build_model",
    "build_store",
    "calibrate",
    "check_precision",
    "choose_threshold",
    "evaluate",
    "evaluate_features",
    "finish_fit",
    "fit",
    "load_checkpoint",
    "load_eval_samples",
    "load_head",
    "network_from_checkpoint",
    "read_checkpoint",
    "recorded_test_items",
    "run_head",
    "save_checkpoint",
    "train_one_epoch",
    "training_masks",
    "training_step",
    "unwrap",
    "validation_batches",
    "with_checkpoint",
]
