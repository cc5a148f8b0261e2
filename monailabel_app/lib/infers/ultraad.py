"""Infer task: lesion label (thresholded UltraAD heatmap) + class probabilities, anomaly score and the input gate's
flags (``input_quality``: colour Doppler / elastography overlay, calliper marks) in the JSON.

The label is written in the image's own geometry (same size, origin, spacing, direction) so 3D Slicer overlays it.
A lesion pixel carries the more likely abnormal class (1 benign, 2 malignant): the radiologist corrects the
drawing or the segment and saves it back, and training reads the image class from those values.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.configs.ultraad import ModelProvider
from lib.imageio import LABELS, read_picture, write_label
from monai_ultraad.inference import Predictor, model_provenance
from monai_ultraad.quality import assess_image

logger = logging.getLogger(__name__)


class LoadPictured:
    """Pre-transform: the request's image path -> ``picture`` (RGB uint8 frame + geometry reference)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data["picture"] = read_picture(data["image"])
        return data


def predictor_for(model, info: dict[str, Any], threshold: float | None = None) -> Predictor:
    """The library's predictor for the provider's current model (``threshold``: the request's, else the checkpoint's)."""
    provenance = model_provenance(model, checkpoint=info.get("checkpoint"),
                                  checkpoint_sha256=info.get("checkpoint_sha256"),
                                  trained=bool(info.get("trained")), shots=info.get("shots"),
                                  created_utc=info.get("created_utc"))
    return Predictor(model, info["threshold"] if threshold is None else threshold, provenance)


def normalised_entropy(probs: np.ndarray) -> float:
    """Class-probability entropy / log(#classes): 0 certain, 1 uniform (the next-image strategy ranks by it)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum() / math.log(len(p)))


class UltraADInfer(BasicInferTask):
    """UltraAD on one 2D ultrasound image (PNG/JPEG, or NIfTI converted from a DICOM series)."""

    def __init__(self, provider: ModelProvider) -> None:
        super().__init__(
            path=None,
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(LABELS),
            dimension=2,
            description="UltraAD: breast-ultrasound lesion heatmap and normal/benign/malignant class (few-shot CLIP)",
            config={"threshold": "checkpoint"},
        )
        self.provider = provider

    def is_valid(self) -> bool:
        return True  # the untrained head answers too (zero-shot prompts), so the model is always listed

    def pre_transforms(self, data=None):
        return [LoadPictured()]

    def post_transforms(self, data=None):
        return []

    def _get_network(self, device, data):
        # never MONAI Label's own loader (plain torch.load): the provider reads checkpoints with weights_only=True
        return self.provider.model()[0]

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cpu") -> dict[str, Any]:
        model, info = self.provider.model()
        picture = data["picture"]
        requested = data.get("threshold")
        threshold = None if requested in (None, "", "checkpoint") else float(requested)
        predictor = predictor_for(model, info, threshold)
        start = time.perf_counter()
        prediction = predictor.predict_image(picture.rgb, Path(str(data["image"])).name,
                                             input_quality=assess_image(picture.rgb).to_dict())  # analysed anyway
        seconds = round(time.perf_counter() - start, 4)
        probs = prediction.class_probs
        abnormal = LABELS["malignant"] if probs["malignant"] > probs["benign"] else LABELS["benign"]
        data[self.output_label_key] = np.where(prediction.lesion_mask, abnormal, 0).astype(np.uint8)
        data[self.output_json_key] = prediction.record(
            lesion_label_value=int(abnormal), uncertainty=normalised_entropy(list(probs.values())), model_seconds=seconds)
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        name = write_label(data[self.output_label_key], data["picture"].reference)
        return name, data[self.output_json_key]
