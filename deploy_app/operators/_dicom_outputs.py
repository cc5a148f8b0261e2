"""Glue shared by the writer operators: algorithm identification and per-image inputs of the DICOM writers."""

from __future__ import annotations

import pydicom

from monai_ultraad.dicom.writers import AlgorithmInfo, FramePrediction, UIDFactory


def algorithm_info(model) -> AlgorithmInfo:
    """The DICOM algorithm identification of the loaded model (``ImageResult.model``)."""
    return AlgorithmInfo(
        version=model.library_version,
        backbone=model.backbone,
        weights_id=model.weights_id,
        checkpoint_sha256=model.checkpoint_sha256,
        random_weights=model.random_weights,
    )


def frame_predictions(result) -> list[FramePrediction]:
    return [FramePrediction(f.frame_number, f.heatmap, f.class_probs, f.anomaly_score) for f in result.frames]


def source_dataset(result) -> pydicom.Dataset:
    """The full source object (pixel data read lazily by pydicom) for referencing in the new objects."""
    return pydicom.dcmread(result.image.path)


def pixel_spacing_mm(result) -> tuple[float, float] | None:
    """Physical spacing of the analysed tissue region, carried into SEG and SR when the scanner recorded it."""
    for region in result.image.tissue_regions:
        spacing = region.pixel_spacing_mm
        if spacing:
            return spacing
    return None


def uid_factory(seed: str | None, result) -> UIDFactory:
    """Fresh random UIDs, or, with a seed (tests), UIDs derived from the seed AND the source file: two files may carry
    the same SOP Instance UID (copies, test corpora), and their outputs must not overwrite each other."""
    return UIDFactory(None if seed is None else f"{seed}|{result.image.path}")
