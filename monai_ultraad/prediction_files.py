"""Prediction files for image inputs: per image a NIfTI heatmap, a PNG overlay and the JSON record; one CSV table.

:func:`predict_files` is the loop the CLI's ``predict`` and the bundle's ``inferring`` share (the bundle reaches it
through :class:`PredictFiles`, a ``_target_`` in ``bundle/configs/inference.json``). Every file is written atomically
(temporary file in the destination folder, then rename). Output names derive from the input file's stem only, so
no output path can leave ``output_dir``.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ultraad.constants import IMAGE_SUFFIXES
from monai_ultraad.errors import UltraADError
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json


def output_stem(path: str | Path) -> str:
    """File-name stem used for every output of one input image (a bare name: no folder can be injected)."""
    stem = Path(str(path)).name
    for suffix in (".gz", ".nii", *IMAGE_SUFFIXES, ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace(" ", "_") or "image"


def write_heatmap_nifti(path: Path, heatmap: np.ndarray) -> Path:
    """A float32 2D NIfTI of the heatmap (x = image column, y = image row), identity affine (pixel units).

    PNG/JPEG inputs carry no physical spacing; x = column so that ITK-based viewers (3D Slicer) show it in the
    orientation MONAI's readers give the source image.
    """
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(heatmap).T, dtype=np.float32), np.eye(4))
    image.header.set_xyzt_units("unknown")
    image.header["descrip"] = b"UltraAD anomaly heatmap [0,1]"
    buf = io.BytesIO()
    image.to_file_map(image.make_file_map({"image": buf, "header": buf}))
    return atomic_write_bytes(path, gzip.compress(buf.getvalue(), mtime=0))


def write_overlay_png(path: Path, image: np.ndarray, prediction) -> Path:
    """The heatmap over the image, a contour at the threshold, the class probabilities; stamped RANDOM WEIGHTS
    when the backbone was not pretrained."""
    from monai_ultraad.visualize import save_overlay_png

    caption = [
        f"{prediction.predicted_class} | " + "  ".join(f"P({c})={p:.2f}" for c, p in prediction.class_probs.items()),
        f"anomaly score {prediction.anomaly_score:.2f} | contour: heatmap >= {prediction.threshold:.2f}",
    ]
    save_overlay_png(path, image, prediction.heatmap, caption, threshold=prediction.threshold,
                     random_weights=prediction.random_weights)
    return Path(path)


class PredictionTable:
    """One CSV row per record: image, predicted_class, P(<class>) for every class, anomaly_score,
    heatmap_threshold, lesion_area_fraction, random_weights, input_flags (the gate's flags, ``;``-separated)."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.path, self.class_names = Path(path), list(class_names)
        self.rows: list[dict[str, Any]] = []

    def add(self, record: Mapping[str, Any]) -> None:
        row = {"image": record["image"], "predicted_class": record["predicted_class"]}
        row.update({f"P({c})": record["class_probabilities"][c] for c in self.class_names})
        for key in ("anomaly_score", "heatmap_threshold", "lesion_area_fraction", "random_weights"):
            row[key] = record[key]
        row["input_flags"] = ";".join((record.get("input_quality") or {}).get("flags", []))
        self.rows.append(row)

    def write(self) -> Path:
        buf = io.StringIO()
        fields = ["image", "predicted_class", *[f"P({c})" for c in self.class_names], "anomaly_score",
                  "heatmap_threshold", "lesion_area_fraction", "random_weights", "input_flags"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_bytes(self.path, buf.getvalue().encode())


def predict_files(predictor, paths: Sequence[str | Path], output_dir: str | Path, refuse_flagged: bool = False,
                  progress: bool = True, nifti: bool = True) -> list[dict[str, Any]]:
    """Run the predictor on image files; per image write ``<stem>_heatmap.nii.gz``, ``<stem>_heatmap.png`` and
    ``<stem>.json`` (the record) into ``output_dir``, plus ``predictions.csv`` for all of them.

    Every record states the input gate's flags; with ``refuse_flagged`` a flagged image is not analysed and its
    JSON is the refusal record. Returns the records.
    """
    from tqdm.auto import tqdm

    from monai_ultraad.data.transforms import load_image_array
    from monai_ultraad.quality import assess_image, refusal_record

    out = Path(output_dir)
    paths = [Path(str(p)) for p in paths]
    stems = [output_stem(p) for p in paths]
    if len(set(stems)) != len(stems):
        raise UltraADError("two input images share a file name; their outputs would overwrite each other")
    table = PredictionTable(out / "predictions.csv", predictor.class_names)
    records = []
    for path, stem in tqdm(list(zip(paths, stems)), desc="predict", unit="img", disable=not progress):
        image = load_image_array(path)
        quality = assess_image(image)
        if refuse_flagged and quality.flagged:
            record = refusal_record(path, quality)
            atomic_write_json(out / f"{stem}.json", record)
            print(f"ultraad: {record['reason']}", file=sys.stderr)
            records.append(record)
            continue
        prediction = predictor.predict_image(image, path.name, input_quality=quality.to_dict())
        if nifti:
            write_heatmap_nifti(out / f"{stem}_heatmap.nii.gz", prediction.heatmap)
        write_overlay_png(out / f"{stem}_heatmap.png", image, prediction)
        record = prediction.record()
        atomic_write_json(out / f"{stem}.json", record)
        table.add(record)
        records.append(record)
    table.write()
    return records


class PredictFiles:
    """:func:`predict_files` as a bundle component: ``inferring`` runs ``$@predict.run()``.

    Args:
        predictor: a :class:`~monai_ultraad.inference.Predictor`.
        images: file paths, or the ``[{"image": path}]`` items of
            :func:`~monai_ultraad.data.datasets.read_image_folder`.
        output_dir: where the files go.
    """

    def __init__(self, predictor, images: Sequence[Any], output_dir: str, refuse_flagged: bool = False,
                 progress: bool = True, nifti: bool = True) -> None:
        self.predictor, self.output_dir = predictor, output_dir
        self.paths = [item["image"] if isinstance(item, Mapping) else item for item in images]
        self.refuse_flagged, self.progress, self.nifti = refuse_flagged, progress, nifti

    def run(self) -> list[dict[str, Any]]:
        return predict_files(self.predictor, self.paths, self.output_dir, self.refuse_flagged, self.progress,
                             self.nifti)


__all__ = ["PredictFiles", "PredictionTable", "output_stem", "predict_files", "write_heatmap_nifti",
           "write_overlay_png"]
