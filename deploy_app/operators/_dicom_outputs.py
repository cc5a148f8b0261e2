"""Glue shared by the writer operators: algorithm identification, per-image inputs of the DICOM writers, and the
common shape of a writer step (write into the source's staging folder, or record why not)."""

from __future__ import annotations

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.writers import AlgorithmInfo, UIDFactory
from monai_ultraad.inference import Prediction

from .output_folder import OutputFolder
from .source_work import SourceWork


def algorithm_info(model) -> AlgorithmInfo:
    """The DICOM algorithm identification of the loaded model (``ImageResult.model``)."""
    return AlgorithmInfo(
        version=model.library_version,
        backbone=model.backbone,
        weights_id=model.weights_id,
        checkpoint_sha256=model.checkpoint_sha256,
        random_weights=model.random_weights,
    )


def frame_predictions(result) -> list[Prediction]:
    """The image's predictions (:class:`monai_ultraad.inference.Prediction`, float16 heatmaps), which the writers
    take as they are (they read ``frame_number``, ``heatmap``, ``class_probs``, ``anomaly_score``)."""
    return result.predictions


def source_dataset(result) -> pydicom.Dataset:
    """The full source object for referencing in the new objects; its Pixel Data (and any other value over 64 kB) is
    read by pydicom only if asked for, which the writers never do, so no step holds the source's pixels."""
    return pydicom.dcmread(result.image.path, defer_size="64 KB")


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


class SourceWriterOperator(Operator):
    """A step that writes objects of one source into its staging folder: subclasses implement :meth:`write`, which
    calls ``work.add(kind, path)`` for each object. A source that already failed passes through untouched; an
    exception fails the source with ``"<what> not written: <reason>"`` (its staged objects are then dropped whole by
    the publisher). Issue-specific writers (viewer SEG, NRRD, ...) subclass this and join the chain before the
    publisher."""

    what = "output"

    def __init__(self, fragment: Fragment, *args, output: OutputFolder, uid_seed: str | None = None,
                 **kwargs) -> None:
        self.output, self.uid_seed = output, uid_seed
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("source")
        spec.output("source")

    def compute(self, op_input, op_output, context) -> None:
        work: SourceWork = op_input.receive("source")
        if work.ok:
            try:
                if work.staging is None:
                    work.staging = self.output.stage()
                self.write(work)
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the study
                work.fail(f"{self.what} not written: {_reason(exc)}")
        op_output.emit(work, "source")

    def write(self, work: SourceWork) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "No space left on device", without the (staging) path
    return str(exc) or type(exc).__name__


__all__ = ["SourceWriterOperator", "algorithm_info", "frame_predictions", "pixel_spacing_mm", "source_dataset",
           "uid_factory"]
