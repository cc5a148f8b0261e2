"""Step 7: colour heatmap overlay as a DICOM Secondary Capture, for PACS viewers without SEG support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.writers import write_overlay
from monai_ultraad.visualize import overlay_heatmap

from ._dicom_outputs import algorithm_info, source_dataset, uid_factory
from .run_report import RunReport


class OverlayWriterOperator(Operator):
    """Writes one Secondary Capture per image: every analysed frame with the heatmap blended in and a contour at the
    validation threshold; derived, not for primary diagnosis."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, report: RunReport, uid_seed: str | None = None,
                 **kwargs) -> None:
        self.output_folder, self.report, self.uid_seed = Path(output_folder), report, uid_seed
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input, op_output, context) -> None:
        for result in op_input.receive("results"):
            try:
                frames = np.stack([
                    overlay_heatmap(result.image.frames[i], f.heatmap, threshold=result.model.threshold)
                    for i, f in enumerate(result.frames)
                ])
                path = write_overlay(source_dataset(result), frames, self.output_folder, algorithm_info(result.model),
                                     uid_factory(self.uid_seed, result), frame_numbers=[f.frame_number for f in result.frames])
            except Exception as exc:
                self.report.fail(result.image.path, f"overlay not written: {exc}")
                continue
            self.report.wrote(path)
