"""MONAI/ignite engines, datasets, handlers and inference pieces for UltraAD (used by the bundle configs)."""

from monai_ultraad.engines.datasets import EvalFeatureDataset, ShotFeatureDataset, collate_eval
from monai_ultraad.engines.handlers import (
    BestHeadKeeper,
    EvaluationReportWriter,
    FewShotCheckpointSaver,
    UltraADMetric,
)
from monai_ultraad.engines.inference import (
    PredictionTableWriter,
    UltraADInferer,
    UltraADTensorNet,
    ultraad_postprocessing,
)
from monai_ultraad.engines.workflows import FewShotEvaluator, FewShotTrainer

__all__ = [
    "BestHeadKeeper",
    "EvalFeatureDataset",
    "EvaluationReportWriter",
    "FewShotCheckpointSaver",
    "FewShotEvaluator",
    "FewShotTrainer",
    "PredictionTableWriter",
    "ShotFeatureDataset",
    "UltraADInferer",
    "UltraADMetric",
    "UltraADTensorNet",
    "collate_eval",
    "ultraad_postprocessing",
]
