"""Step 6: TID 1500 Comprehensive 3D SR per image: finding, class probabilities, score, SEG references."""

from __future__ import annotations

from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.viewer_sr import write_viewer_report
from monai_ultraad.dicom.writers import write_report

from ._dicom_outputs import algorithm_info, frame_predictions, pixel_spacing_mm, source_dataset, uid_factory
from .run_report import RunReport


class SRWriterOperator(Operator):
    """Writes the measurement report referencing the source image and its BINARY SEG; marks the source processed."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, report: RunReport, uid_seed: str | None = None,
                 **kwargs) -> None:
        self.output_folder, self.report, self.uid_seed = Path(output_folder), report, uid_seed
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentations")

    def compute(self, op_input, op_output, context) -> None:
        for result, binary_path in op_input.receive("segmentations"):
            try:
                path = write_report(
                    source_dataset(result), pydicom.dcmread(binary_path), frame_predictions(result),
                    result.model.threshold, self.output_folder, algorithm_info(result.model), uid_factory(self.uid_seed, result),
                    pixel_spacing_mm=pixel_spacing_mm(result),  # the analysed region's spacing -> lesion area
                )
                # the lesion outline as an image region, which OHIF's SR viewport can show (None: no lesion)
                viewer = write_viewer_report(
                    source_dataset(result), frame_predictions(result), result.model.threshold, self.output_folder,
                    algorithm_info(result.model), uid_factory(self.uid_seed, result),
                )
            except Exception as exc:
                self.report.fail(result.image.path, f"SR not written: {exc}")
                continue
            self.report.wrote(path)
            if viewer is not None:
                self.report.wrote(viewer)
            self.report.done(result.image.path)
