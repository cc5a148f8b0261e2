"""Step 2: decode the ultrasound instances (every frame, or every n-th of a cine loop)."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.reader import UnsupportedDicomError, read_ultrasound

from .run_report import RunReport


class UltrasoundSelectorOperator(Operator):
    """Decodes each candidate file into an ``UltrasoundImage`` (RGB frames + ultrasound regions).

    A file that cannot be decoded (e.g. JPEG XL, truncated, missing Pixel Data) is logged with its reason and
    recorded as failed; the other files of the study are still processed.
    """

    def __init__(self, fragment: Fragment, *args, report: RunReport, frame_step: int = 1,
                 max_frames: int | None = None, **kwargs) -> None:
        if frame_step < 1:
            raise ValueError("frame_step must be >= 1")
        self.report, self.frame_step, self.max_frames = report, frame_step, max_frames
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_files")
        spec.output("images")

    def compute(self, op_input, op_output, context) -> None:
        images = []
        for path in op_input.receive("dicom_files"):
            try:
                images.append(read_ultrasound(path, frame_step=self.frame_step, max_frames=self.max_frames))
            except UnsupportedDicomError as exc:
                reason = str(exc)
                if "modality" in reason.lower() or "sop class" in reason.lower():
                    self.report.skip(path, reason)
                else:
                    self.report.fail(path, reason)
        op_output.emit(images, "images")
