"""Step 6: TID 1500 Comprehensive 3D SR per image: finding, class probabilities, score, SEG references."""

from __future__ import annotations

from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.writers import write_report

from ._dicom_outputs import algorithm_info, frame_predictions, source_dataset, uid_factory
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
                    input_quality=result.quality.summary() if result.quality is not None else None,
                )  # the SEG is read with pydicom: highdicom's reader refuses 2D pixel measures without slice thickness
            except Exception as exc:
                self.report.fail(result.image.path, f"SR not written: {exc}")
                continue
            self.report.wrote(path)
            self.report.done(result.image.path)
