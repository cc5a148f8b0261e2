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
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.configs.ultraad import ModelProvider
from lib.imageio import LABELS, read_picture, write_label
from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.data.transforms import apply_pipeline, map_to_original, ultraad_array_preprocessing
from monai_ultraad.quality import QUALITY_KEY, assess_image

logger = logging.getLogger(__name__)


class LoadPictured:
    """Pre-transform: the request's image path -> ``picture`` (RGB uint8 frame + geometry reference)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data["picture"] = read_picture(data["image"])
        return data


@torch.no_grad()
def predict_picture(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Heatmap (rows, cols) in the picture's geometry, class probabilities, anomaly score of one RGB frame."""
    pre = ultraad_array_preprocessing(model.image_size, model.backbone.mean, model.backbone.std)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    x = apply_pipeline(pre, {"image": image})["image"].as_tensor()[None]
    out = model(x.to(next(model.parameters()).device))
    heatmap = map_to_original(out.anomaly_map[0].float().cpu(), rgb.shape[:2])[0].numpy()
    return heatmap, out.class_probs[0].float().cpu().numpy(), float(out.anomaly_score[0])


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
        start = time.perf_counter()
        heatmap, probs, score = predict_picture(model, picture.rgb)
        threshold = info["threshold"]
        requested = data.get("threshold")
        if requested not in (None, "", "checkpoint"):
            threshold = float(requested)
        lesion = heatmap >= threshold
        abnormal = LABELS["malignant"] if probs[CLASS_NAMES.index("malignant")] > probs[CLASS_NAMES.index("benign")] \
            else LABELS["benign"]
        data[self.output_label_key] = np.where(lesion, abnormal, 0).astype(np.uint8)
        random_weights = bool(model.random_weights)
        result = {
            "class_probabilities": {c: float(p) for c, p in zip(model.class_names, probs)},
            "predicted_class": model.class_names[int(np.argmax(probs))],
            "anomaly_score": score,
            "threshold": float(threshold),
            "lesion_pixels": int(lesion.sum()),
            "lesion_label_value": int(abnormal),
            "uncertainty": normalised_entropy(probs),
            "model": {**info, "backbone": model.backbone.model_name, "weights_id": model.backbone.weights_id},
            "random_weights": random_weights,
            "model_seconds": round(time.perf_counter() - start, 4),
            QUALITY_KEY: assess_image(picture.rgb).to_dict(),  # colour overlay / marks flags (analysed anyway)
        }
        if random_weights:
            result["warning"] = RANDOM_WEIGHTS_WARNING
        data[self.output_json_key] = result
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        name = write_label(data[self.output_label_key], data["picture"].reference)
        return name, data[self.output_json_key]
