"""MONAI/ignite engines, datasets, handlers and inference pieces for UltraAD (used by the bundle configs)."""

from monai_ultraad.workflows.datasets import EvalFeatureDataset, ShotFeatureDataset, collate_eval
from monai_ultraad.workflows.engines import FewShotEvaluator, FewShotTrainer
from monai_ultraad.workflows.handlers import (
    BestHeadKeeper,
    EvaluationReportWriter,
    FewShotCheckpointSaver,
    UltraADMetric,
)
from monai_ultraad.workflows.inference import (
    PredictionTableWriter,
    UltraADInferer,
    UltraADTensorNet,
    output_value,
    ultraad_postprocessing,
)

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
    "output_value",
    "ultraad_postprocessing",
]
