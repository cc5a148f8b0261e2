"""MONAI/ignite engines, datasets, handlers and export wrapper for UltraAD (used by the bundle configs)."""

from monai_ultraad.engines.datasets import EvalFeatureDataset, ShotFeatureDataset, collate_eval
from monai_ultraad.engines.handlers import (
    BestHeadKeeper,
    EvaluationReportWriter,
    FewShotCheckpointSaver,
    UltraADMetric,
)
from monai_ultraad.engines.inference import UltraADTensorNet, output_value
from monai_ultraad.engines.workflows import FewShotEvaluator, FewShotTrainer

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
    "output_value",
]
