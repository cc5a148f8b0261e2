"""Step 3: choose what the model sees: the tissue (B-mode) ultrasound regions, or the whole frame."""

from __future__ import annotations

from dataclasses import dataclass

from monai.deploy.core import Operator, OperatorSpec

from monai_ultraad.dicom.inference import AnalysisWindow, analysis_windows


@dataclass
class CroppedUltrasound:
    image: object  # monai_ultraad.dicom.reader.UltrasoundImage
    windows: list[AnalysisWindow]


class RegionCropOperator(Operator):
    """Attaches to each image the windows to analyse: its tissue regions from the Sequence of Ultrasound Regions
    (scanner text, colour bars and Doppler panels are left out), or the full frame when it has none."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("images")
        spec.output("cropped")

    def compute(self, op_input, op_output, context) -> None:
        cropped = []
        for image in op_input.receive("images"):
            rows, cols = image.frames.shape[1:3]
            cropped.append(CroppedUltrasound(image, analysis_windows(image.tissue_regions, rows, cols)))
        op_output.emit(cropped, "cropped")
