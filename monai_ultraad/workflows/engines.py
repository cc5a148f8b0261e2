"""MONAI engines for UltraAD: a few-shot trainer and an evaluator that run the head on cached features.

They are :class:`monai.engines.SupervisedTrainer` / :class:`monai.engines.SupervisedEvaluator` with UltraAD's
iteration (leave-one-out memory, multitask loss; heatmaps mapped back to each image's geometry), so MONAI handlers
(StatsHandler, ValidationHandler, TensorBoard, MLflow, ...) attach to them as usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from monai_ultraad.engine import FewShotBatch, check_precision, run_head, training_step
from monai_ultraad.networks.backbone import VisualFeatures


class FewShotTrainer(SupervisedTrainer):
    """Trains the UltraAD head on batches of :class:`~monai_ultraad.workflows.ShotFeatureDataset`.

    Takes :class:`monai.engines.SupervisedTrainer`'s arguments, plus ``precision`` ("fp32" or "bf16", see
    :class:`~monai_ultraad.engine.TrainConfig`); ``decollate`` is off because the batch holds features, not images.
    ``engine.state.output`` holds ``loss``, ``seg_loss`` and ``cls_loss`` (floats).
    """

    def __init__(self, *args: Any, precision: str = "fp32", **kwargs: Any) -> None:
        self.precision = check_precision(precision)
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = FewShotBatch(
            VisualFeatures(batchdata["cls_token"], batchdata["patch_tokens"]),
            batchdata["mask"],
            batchdata["label"],
            batchdata["slot"],
        )
        _, parts = training_step(engine.network, batch, engine.optimizer, engine.loss_function, self.precision)
        engine.state.output = dict(parts)
        return engine.state.output


class FewShotEvaluator(SupervisedEvaluator):
    """Scores :class:`~monai_ultraad.workflows.EvalFeatureDataset` batches.

    ``engine.state.output`` per iteration: ``probs`` (B, C), ``scores`` (B,), ``labels`` (B,), ``maps`` (list of
    (H, W) heatmaps at each image's original size), ``masks`` (matching ground truth) and ``ids``; the
    :class:`~monai_ultraad.workflows.UltraADMetric` and the report writer consume it. ``precision`` "bf16" is for
    the per-epoch validation of a bf16 training run (comparing epochs); evaluation proper stays "fp32".
    """

    def __init__(self, *args: Any, precision: str = "fp32", **kwargs: Any) -> None:
        self.precision = check_precision(precision)
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        samples = batchdata["samples"]
        features = VisualFeatures(batchdata["cls_token"], batchdata["patch_tokens"])
        out, maps = run_head(engine.network, features, samples, self.precision)
        engine.state.output = {
            "probs": out.class_probs.float().cpu().numpy(),
            "scores": out.anomaly_score.float().cpu().numpy(),
            "labels": np.array([s.label for s in samples]),
            "maps": maps,
            "masks": [s.mask for s in samples],
            "ids": [str(s.item.get("id")) for s in samples],
        }
        return engine.state.output


__all__ = ["FewShotEvaluator", "FewShotTrainer"]
