"""MONAI dictionary transforms that turn UltraAD's network output into files people and machines read.

The inference pipeline (CLI ``predict``, the bundle's ``inferring`` workflow, ...) is::

    UltraADInferer output {"anomaly_map", "class_probs", "anomaly_score"} under "pred"
      -> SplitPredictiond -> HeatmapToOriginald -> SaveHeatmapNiftid -> SaveHeatmapOverlayd -> SavePredictionJsond

Every file is written atomically (temporary file in the destination folder, then rename). Output names derive from
the input file's stem only, so no output path can leave ``output_dir``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.data.datasets import IMAGE_SUFFIXES
from monai_ultraad.data.transforms import LoadUltrasoundImaged, apply_pipeline, map_to_original
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json

PRED_KEY = "pred"
MAP_KEY = "anomaly_map"
PROBS_KEY = "class_probs"
SCORE_KEY = "anomaly_score"


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _size(value: Any) -> tuple[int, int]:
    """(H, W) from an item's ``image_size`` (a tuple, a tensor, or a list of 0-d tensors after decollation)."""
    arr = np.asarray([int(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)])
    if arr.shape != (2,):
        raise ValueError(f"image_size must be (H, W), got {value!r}")
    return int(arr[0]), int(arr[1])


def output_stem(path: str | Path) -> str:
    """File-name stem used for every output of one input image (a bare name: no folder can be injected)."""
    stem = Path(str(path)).name
    for suffix in (".gz", ".nii", *IMAGE_SUFFIXES, ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace(" ", "_") or "image"


class SplitPredictiond(Transform):
    """Move the entries of the network's dict output (under ``key``) to top-level keys of the item."""

    def __init__(self, key: str = PRED_KEY) -> None:
        self.key = key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred = d.pop(self.key)
        if not isinstance(pred, Mapping):
            raise TypeError(f"'{self.key}' must be a dict of model outputs, got {type(pred).__name__}")
        d.update(pred)
        return d


class HeatmapToOriginald(MapTransform):
    """Map (1, S, S) heatmaps back onto the original (H, W) image geometry (undo square pad + resize)."""

    def __init__(self, keys: KeysCollection = MAP_KEY, size_key: str = "image_size") -> None:
        super().__init__(keys)
        self.size_key = size_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = _size(d[self.size_key])
        for key in self.key_iterator(d):
            heatmap = torch.as_tensor(_numpy(d[key]))
            d[key] = map_to_original(heatmap, size).clamp(0.0, 1.0)
        return d


class SaveHeatmapNiftid(MapTransform):
    """Write each heatmap as a float32 2D NIfTI ``<stem>_heatmap.nii.gz`` (x = image column, y = image row).

    The affine is the identity (pixel units): PNG/JPEG inputs carry no physical spacing. Stored as x = column so
    that ITK-based viewers (3D Slicer) show it in the orientation MONAI's readers give the source image.
    """

    def __init__(self, keys: KeysCollection = MAP_KEY, output_dir: str = "./predictions",
                 path_key: str = "image_path", postfix: str = "heatmap") -> None:
        super().__init__(keys)
        self.output_dir, self.path_key, self.postfix = Path(output_dir), path_key, postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import nibabel as nib

        d = dict(data)
        stem = output_stem(d[self.path_key])
        for key in self.key_iterator(d):
            heatmap = _numpy(d[key]).squeeze()
            if heatmap.ndim != 2:
                raise ValueError(f"{key} must be a 2D heatmap, got shape {heatmap.shape}")
            image = nib.Nifti1Image(np.ascontiguousarray(heatmap.T, dtype=np.float32), np.eye(4))
            image.header.set_xyzt_units("unknown")
            image.header["descrip"] = b"UltraAD anomaly heatmap [0,1]"
            buf = io.BytesIO()
            file_map = image.make_file_map({"image": buf, "header": buf})
            image.to_file_map(file_map)
            name = f"{stem}_{self.postfix}.nii.gz"
            atomic_write_bytes(self.output_dir / name, gzip.compress(buf.getvalue(), mtime=0))
            d[f"{key}_nifti"] = str(self.output_dir / name)
        return d


class SaveHeatmapOverlayd(MapTransform):
    """Write ``<stem>_heatmap.png``: the heatmap over the original image, a contour at ``threshold`` and the class
    probabilities; stamped with the random-weights warning when the backbone was not pretrained."""

    def __init__(self, keys: KeysCollection = MAP_KEY, output_dir: str = "./predictions", threshold: float = 0.5,
                 class_names: Sequence[str] = CLASS_NAMES, random_weights: bool = False,
                 path_key: str = "image_path") -> None:
        super().__init__(keys)
        self.output_dir, self.threshold = Path(output_dir), float(threshold)
        self.class_names, self.random_weights, self.path_key = list(class_names), bool(random_weights), path_key
        self._loader = LoadUltrasoundImaged(keys="image")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_ultraad.visualize import save_overlay_png

        d = dict(data)
        path = str(d[self.path_key])
        original = _numpy(apply_pipeline(self._loader, {"image": path})["image"]).transpose(1, 2, 0)
        probs = _numpy(d[PROBS_KEY]).reshape(-1)
        predicted = self.class_names[int(probs.argmax())]
        caption = [
            f"{predicted} | " + "  ".join(f"P({c})={p:.2f}" for c, p in zip(self.class_names, probs)),
            f"anomaly score {float(_numpy(d[SCORE_KEY]).reshape(-1)[0]):.2f} | contour: heatmap >= {self.threshold:.2f}",
        ]
        for key in self.key_iterator(d):
            heatmap = _numpy(d[key]).squeeze()
            name = f"{output_stem(path)}_heatmap.png"
            save_overlay_png(self.output_dir / name, original, heatmap, caption, threshold=self.threshold,
                             random_weights=self.random_weights)
            d[f"{key}_overlay"] = str(self.output_dir / name)
        return d


class SavePredictionJsond(Transform):
    """Write ``<stem>.json``: class probabilities, predicted class, anomaly score, threshold, lesion area, model,
    and the input gate's flags when an earlier step put them in the item (``input_quality``)."""

    def __init__(self, output_dir: str = "./predictions", threshold: float = 0.5,
                 class_names: Sequence[str] = CLASS_NAMES, model_info: Mapping[str, Any] | None = None,
                 random_weights: bool = False, path_key: str = "image_path") -> None:
        self.output_dir, self.threshold = Path(output_dir), float(threshold)
        self.class_names, self.model_info = list(class_names), dict(model_info or {})
        self.random_weights, self.path_key = bool(random_weights), path_key

    def record(self, d: Mapping[Hashable, Any]) -> dict[str, Any]:
        probs = _numpy(d[PROBS_KEY]).reshape(-1)
        heatmap = _numpy(d[MAP_KEY]).squeeze()
        rec: dict[str, Any] = {
            "image": Path(str(d[self.path_key])).name,
            "predicted_class": self.class_names[int(probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(self.class_names, probs)},
            "anomaly_score": float(_numpy(d[SCORE_KEY]).reshape(-1)[0]),
            "heatmap_threshold": self.threshold,
            "lesion_area_fraction": float((heatmap >= self.threshold).mean()),
            "heatmap_max": float(heatmap.max()),
            "model": self.model_info,
            "random_weights": self.random_weights,
        }
        if self.random_weights:
            rec["warning"] = RANDOM_WEIGHTS_WARNING
        if "input_quality" in d:  # the input gate's flags (monai_ultraad.quality.AssessInputQualityd)
            rec["input_quality"] = d["input_quality"]
        return rec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rec = self.record(d)
        path = self.output_dir / f"{output_stem(d[self.path_key])}.json"
        atomic_write_json(path, rec)
        d["prediction_record"] = rec
        return d


__all__ = [
    "HeatmapToOriginald",
    "SaveHeatmapNiftid",
    "SaveHeatmapOverlayd",
    "SavePredictionJsond",
    "SplitPredictiond",
    "output_stem",
]
