"""The prediction record: the one JSON form of a :class:`~monai_ultraad.inference.Prediction`.

Written by :func:`prediction_record` only, and the same on every surface: the CLI's ``<stem>.json``, the bundle's
``inferring`` outputs, the deploy app's ``ultraad_run.json`` (``predictions``, per source and analysed frame) and
the MONAI Label infer answer. Its JSON Schema is ``monai_ultraad/schemas/prediction.schema.json`` (package data,
:func:`prediction_schema`); a refused input's record (:func:`monai_ultraad.quality.refusal_record`) is the
schema's other form.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING

#: Extra keys a surface may add (declared in the schema): MONAI Label's label value, entropy and model time.
SURFACE_KEYS = frozenset({"lesion_label_value", "uncertainty", "model_seconds"})


def prediction_record(prediction, **extra: Any) -> dict[str, Any]:
    """The record of one prediction (a :class:`~monai_ultraad.inference.Prediction`); ``extra``: surface keys."""
    unknown = set(extra) - SURFACE_KEYS
    if unknown:
        raise ValueError(f"not a prediction record key: {sorted(unknown)}")
    mask = prediction.lesion_mask
    record: dict[str, Any] = {
        "image": str(prediction.image),
        "frame_number": int(prediction.frame_number),
        "predicted_class": prediction.predicted_class,
        "class_probabilities": {c: float(p) for c, p in prediction.class_probs.items()},
        "anomaly_score": float(prediction.anomaly_score),
        "heatmap_threshold": float(prediction.threshold),
        "lesion_pixels": int(np.count_nonzero(mask)),
        "lesion_area_fraction": float(mask.mean()) if mask.size else 0.0,
        "heatmap_max": float(np.max(prediction.heatmap)) if mask.size else 0.0,
        "model": dict(prediction.model),
        "random_weights": bool(prediction.random_weights),
        "input_quality": prediction.input_quality,
        **extra,
    }
    if prediction.random_weights:
        record["warning"] = RANDOM_WEIGHTS_WARNING
    return record


@cache
def _schema_text() -> str:
    return resources.files("monai_ultraad").joinpath("schemas/prediction.schema.json").read_text()


def prediction_schema() -> dict[str, Any]:
    """The JSON Schema of prediction (and refusal) records."""
    return json.loads(_schema_text())


__all__ = ["SURFACE_KEYS", "prediction_record", "prediction_schema"]
