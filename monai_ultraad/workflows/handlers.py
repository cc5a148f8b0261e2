"""Ignite metric and handlers for UltraAD's MONAI engines: metrics, best-epoch selection, checkpoint, reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from monai_ultraad.checkpoint import save_checkpoint
from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.engine import TrainConfig, finish_fit, validation_batches
from monai_ultraad.io_utils import atomic_write_json
from monai_ultraad.metrics import UltraADEvaluator
from monai_ultraad.networks.ultraad import UltraAD
from monai_ultraad.selection import BestEpoch, selection_score
from monai_ultraad.visualize import plot_prediction_rocs
from monai_ultraad.workflows.datasets import EvalFeatureDataset

logger = logging.getLogger(__name__)


class UltraADMetric(Metric):
    """The standard UltraAD metric set (:class:`~monai_ultraad.metrics.UltraADEvaluator`) as an ignite metric.

    Its value under its own name is the model-selection score (mean of validation image AUROC, 3-class AUROC and
    pixel AUROC); every scalar of the full set is also written to ``engine.state.metrics`` (``image_auroc``,
    ``pixel_auroc``, ``dice``, ...). The full result, with notes, stays in :attr:`last_result`.

    Args:
        threshold: heatmap threshold for Dice / IoU.
        class_names: the model's classes.
    """

    def __init__(self, threshold: float = 0.5, class_names: Sequence[str] | None = None) -> None:
        self.threshold = float(threshold)
        self.class_names = class_names
        self.last_result: dict[str, Any] = {}
        # ignite unpacks mapping outputs into (y_pred, y); hand over the whole dict wrapped in a tuple instead
        super().__init__(output_transform=lambda output: (output,))

    def reset(self) -> None:
        kwargs = {"class_names": self.class_names} if self.class_names else {}
        self._evaluator = UltraADEvaluator(threshold=self.threshold, **kwargs)

    def update(self, output: tuple[dict[str, Any]]) -> None:
        out = output[0]
        self._evaluator.update(out["probs"], out["scores"], out["labels"], out["maps"], out["masks"])

    def compute(self) -> float:
        self.last_result = self._evaluator.compute()
        return selection_score(self.last_result)

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()
        for key, value in self.last_result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                engine.state.metrics[key] = value


class BestHeadKeeper(BestEpoch):
    """:class:`~monai_ultraad.selection.BestEpoch` as a handler of the validation evaluator: after each validation
    pass it records the epoch's metrics (those of the evaluator's :class:`UltraADMetric`, ``metric``).

    Model selection uses validation images only; the test set is never seen during training.
    """

    def __init__(self, network: UltraAD, metric: UltraADMetric) -> None:
        super().__init__()
        self.network, self.metric = network, metric

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.update(engine.state.epoch, self.metric.last_result, self.network)


class FewShotCheckpointSaver:
    """At the end of training: :func:`~monai_ultraad.engine.finish_fit` (best epoch restored, calibration and
    heatmap threshold chosen on validation), then :func:`~monai_ultraad.checkpoint.save_checkpoint`, both as
    :func:`~monai_ultraad.engine.fit` and the CLI do.

    Attach to the trainer. Writes ``save_path`` atomically with the head weights and provenance (model config,
    backbone and its weights id, seed, shot / validation / test ids, hyperparameters, best epoch, threshold,
    calibration, versions).

    Args:
        save_path: checkpoint file (e.g. ``models/model.pt``).
        network: the UltraAD model.
        keeper: the evaluator's :class:`BestHeadKeeper` (None: keep the last epoch).
        validation: validation dataset used for the calibration and the threshold (None or empty: threshold 0.5).
        split: the few-shot split (anything with ``to_dict()``) recorded in the checkpoint.
        train_config: hyperparameters to record (a dict, e.g. the bundle's).
        extra: more provenance to record (dataset, bundle version, ...).
    """

    def __init__(
        self,
        save_path: str,
        network: UltraAD,
        keeper: BestHeadKeeper | None = None,
        validation: EvalFeatureDataset | None = None,
        split: Any = None,
        train_config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.save_path = Path(save_path)
        self.network, self.keeper, self.validation = network, keeper, validation
        self.split, self.train_config, self.extra = split, train_config or {}, extra or {}
        self.threshold: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batches = []
        if self.validation is not None and len(self.validation):
            batches = validation_batches(self.validation.data, self.validation.store)
        result = finish_fit(self.network, batches, self.keeper or BestEpoch(), engine.state.epoch)
        if self.network.random_weights:
            result.notes.insert(0, RANDOM_WEIGHTS_WARNING)
        self.threshold = result.threshold
        known = set(TrainConfig.__dataclass_fields__)
        config = TrainConfig(**{k: v for k, v in self.train_config.items() if k in known})
        split = self.split.to_dict() if hasattr(self.split, "to_dict") else self.split
        extra = {**self.extra, "bundle_train_config": self.train_config, "notes": result.notes,
                 "best_val_score": self.keeper.best_score if self.keeper else None}
        save_checkpoint(self.save_path, self.network, threshold=result.threshold, train_config=config, split=split,
                        fit_result=result, extra=extra)
        logger.info("saved %s (best epoch %d, validation threshold %.3f)", self.save_path, result.best_epoch,
                    result.threshold)
        engine.state.ultraad_checkpoint = {"path": str(self.save_path), "best_epoch": result.best_epoch,
                                           "threshold": result.threshold}


class EvaluationReportWriter:
    """Collects per-image predictions of an evaluator; at the end writes metrics.json, predictions.json, roc.png.

    Attach to the evaluator after its :class:`UltraADMetric` (named ``metric_name``).
    """

    def __init__(self, output_dir: str, metric: UltraADMetric, class_names: Sequence[str], random_weights: bool,
                 title: str = "UltraAD") -> None:
        self.output_dir = Path(output_dir)
        self.metric, self.class_names = metric, list(class_names)
        self.random_weights, self.title = random_weights, title
        self.predictions: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.predictions.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for i, image_id in enumerate(out["ids"]):
            probs = out["probs"][i]
            self.predictions.append({
                "id": image_id,
                "label": self.class_names[int(out["labels"][i])],
                "predicted": self.class_names[int(np.argmax(probs))],
                "probabilities": {c: float(p) for c, p in zip(self.class_names, probs)},
                "anomaly_score": float(out["scores"][i]),
            })

    def _write(self, engine: Engine) -> None:
        result = dict(self.metric.last_result)
        result["random_weights"] = self.random_weights
        if self.random_weights:
            result["warning"] = RANDOM_WEIGHTS_WARNING
        atomic_write_json(self.output_dir / "metrics.json", result, nan_as_null=True)
        atomic_write_json(self.output_dir / "predictions.json", self.predictions)
        plot_prediction_rocs(self.output_dir / "roc.png", self.predictions, self.class_names, self.title, self.random_weights)
        logger.info("evaluation: " + ", ".join(
            f"{k}={result.get(k, float('nan')):.3f}" for k in ("image_auroc", "cls_auroc_macro", "pixel_auroc", "dice")
        ))


__all__ = ["BestHeadKeeper", "EvaluationReportWriter", "FewShotCheckpointSaver", "UltraADMetric"]
