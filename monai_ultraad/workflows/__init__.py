"""MONAI/ignite engines, datasets, handlers and export wrapper for UltraAD (used by the bundle configs)."""

from monai_ultraad.workflows.datasets import EvalFeatureDataset, ShotFeatureDataset, collate_eval
from monai_ultraad.workflows.engines import FewShotEvaluator, FewShotTrainer
from monai_ultraad.workflows.handlers import (
    BestHeadKeeper,
    EvaluationReportWriter,
    FewShotCheckpointSaver,
    UltraADMetric,
)
from monai_ultraad.workflows.inference import UltraADTensorNet

__all__ = [
    "BestHeadKeeper",
    "EvalFeatureDataset",
    "EvaluationReportWriter",
    "FewShotCheckpointSaver",
    "FewShotEvaluator",
    "FewShotTrainer",
    "ShotFeatureDataset",
    "UltraADMetric",
    "UltraADTensorNet",
    "collate_eval",
]
