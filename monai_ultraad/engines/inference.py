"""Inference pieces shared by the CLI, the bundle's ``inferring`` workflow and the deploy app."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from monai.transforms import Compose

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.data.postprocessing import (
    MAP_KEY,
    PRED_KEY,
    HeatmapToOriginald,
    SaveHeatmapNiftid,
    SaveHeatmapOverlayd,
    SavePredictionJsond,
    SplitPredictiond,
)
from monai_ultraad.io_utils import atomic_write_bytes


class UltraADInferer(Inferer):
    """Runs UltraAD on a batch of preprocessed images and returns a dict of tensors.

    ``{"anomaly_map": (B, 1, S, S), "class_probs": (B, C), "anomaly_score": (B,)}``; MONAI engines decollate it per
    image and :class:`~monai_ultraad.data.postprocessing.SplitPredictiond` lifts the entries to top-level keys.
    """

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> dict:
        with torch.no_grad():
            out = network(inputs)
        return {"anomaly_map": out.anomaly_map, "class_probs": out.class_probs, "anomaly_score": out.anomaly_score}


def ultraad_postprocessing(
    output_dir: str,
    threshold: float = 0.5,
    class_names: Sequence[str] = CLASS_NAMES,
    model_info: Mapping[str, Any] | None = None,
    random_weights: bool = False,
    nifti: bool = True,
    input_quality: bool = True,
) -> Compose:
    """The standard output chain: per image a NIfTI heatmap, a PNG overlay and a JSON of class probabilities (with
    the input gate's flags, :mod:`monai_ultraad.quality`, unless ``input_quality=False``)."""
    from monai_ultraad.quality.transforms import AssessInputQualityd

    steps = [SplitPredictiond(PRED_KEY), HeatmapToOriginald(MAP_KEY)]
    if input_quality:
        steps.append(AssessInputQualityd())
    if nifti:
        steps.append(SaveHeatmapNiftid(MAP_KEY, output_dir=output_dir))
    steps += [
        SaveHeatmapOverlayd(MAP_KEY, output_dir=output_dir, threshold=threshold, class_names=class_names,
                            random_weights=random_weights),
        SavePredictionJsond(output_dir=output_dir, threshold=threshold, class_names=class_names,
                            model_info=model_info, random_weights=random_weights),
    ]
    return Compose(steps)


class PredictionTableWriter:
    """Collects each image's ``prediction_record`` from an engine's (decollated) outputs; writes one CSV at the end.

    Columns: image, predicted_class, P(<class>) for every class, anomaly_score, heatmap_threshold,
    lesion_area_fraction, random_weights, input_flags (the input gate's flags, ``;``-separated, empty when none).
    """

    def __init__(self, output_dir: str, class_names: Sequence[str] = CLASS_NAMES, filename: str = "predictions.csv"):
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.write())

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        for out in outputs if isinstance(outputs, list) else [outputs]:
            if isinstance(out, Mapping) and "prediction_record" in out:
                self.add(out["prediction_record"])

    def add(self, record: Mapping[str, Any]) -> None:
        row = {"image": record["image"], "predicted_class": record["predicted_class"]}
        row.update({f"P({c})": record["probabilities"][c] for c in self.class_names})
        for key in ("anomaly_score", "heatmap_threshold", "lesion_area_fraction", "random_weights"):
            row[key] = record[key]
        row["input_flags"] = ";".join(record.get("input_quality", {}).get("flags", []))
        self.rows.append(row)

    def write(self) -> Path:
        buf = io.StringIO()
        fields = ["image", "predicted_class", *[f"P({c})" for c in self.class_names], "anomaly_score",
                  "heatmap_threshold", "lesion_area_fraction", "random_weights", "input_flags"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_bytes(self.path, buf.getvalue().encode())




class UltraADTensorNet(torch.nn.Module):
    """UltraAD with plain tensor outputs, for export (TorchScript / torch.export) and MONAI's ``verify_net_in_out``.

    Args:
        model: a trained UltraAD.
        outputs: ``"all"`` returns ``(anomaly_map (B,1,S,S), class_probs (B,C), anomaly_score (B,))``;
            ``"anomaly_map"`` returns only the map, the first output declared in the bundle's metadata.
    """

    def __init__(self, model: torch.nn.Module, outputs: str = "all") -> None:
        super().__init__()
        if outputs not in ("all", "anomaly_map"):
            raise ValueError(f"outputs must be 'all' or 'anomaly_map', not {outputs!r}")
        self.model = model.eval()
        self.outputs = outputs

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        if self.outputs == "anomaly_map":
            return out.anomaly_map
        return out.anomaly_map, out.class_probs, out.anomaly_score


__all__ = ["PredictionTableWriter", "UltraADInferer", "UltraADTensorNet", "ultraad_postprocessing"]
