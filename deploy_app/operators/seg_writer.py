"""Step 5: DICOM SEG of each image's heatmaps: FRACTIONAL (probability) and BINARY (validation threshold), source-
faithful; plus the viewer SEG(s) and Slicer .seg.nrrd in display geometry (monai_ultraad.dicom.viewer_seg)."""

from __future__ import annotations

from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.viewer_seg import write_viewer_segmentations
from monai_ultraad.dicom.writers import write_segmentations

from ._dicom_outputs import algorithm_info, frame_predictions, source_dataset, uid_factory
from .run_report import RunReport


class SegWriterOperator(Operator):
    """Writes the SEG objects of each source image into the source study (new series, fresh UIDs) and emits, on
    ``segmentations``, (result, binary SEG path) pairs for the SR writer."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, report: RunReport, uid_seed: str | None = None,
                 **kwargs) -> None:
        self.output_folder, self.report, self.uid_seed = Path(output_folder), report, uid_seed
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("segmentations")

    def compute(self, op_input, op_output, context) -> None:
        written = []
        for result in op_input.receive("results"):
            try:
                source, predictions, algorithm = source_dataset(result), frame_predictions(result), algorithm_info(result.model)
                fractional, binary = write_segmentations(
                    source, predictions, result.model.threshold, self.output_folder, algorithm,
                    uid_factory(self.uid_seed, result),
                )
                viewer = write_viewer_segmentations(
                    source, predictions, result.model.threshold, self.output_folder, algorithm,
                    uid_factory(self.uid_seed, result),
                )
            except Exception as exc:  # one bad image must not stop the study
                self.report.fail(result.image.path, f"SEG not written: {exc}")
                continue
            for path in (fractional, binary, *viewer):
                self.report.wrote(path)
            written.append((result, binary))
        op_output.emit(written, "segmentations")
