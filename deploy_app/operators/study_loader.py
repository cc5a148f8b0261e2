"""Step 1: find the DICOM files of the study folder that may be ultrasound images."""

from __future__ import annotations

from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.reader import scan_folder

from .run_report import RunReport


class StudyLoaderOperator(Operator):
    """Scans ``input_folder`` (recursively, headers only) and emits the candidate files on ``dicom_files``.

    Files that are not ultrasound images (another modality, SEG/SR objects, non-DICOM files) are recorded in the run
    report with their reason: non-DICOM and unreadable files as failures, the others as skipped.
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, report: RunReport, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("dicom_files")

    def compute(self, op_input, op_output, context) -> None:
        if not self.input_folder.is_dir():
            raise FileNotFoundError(f"input folder not found: {self.input_folder}")
        candidates, excluded = scan_folder(self.input_folder)
        for path, reason in excluded:
            if is_failure(reason):
                self.report.fail(path, reason)
            else:
                self.report.skip(path, reason)
        op_output.emit(candidates, "dicom_files")


def is_failure(reason: str) -> bool:
    """Unusable files count as failures; files that are simply not ultrasound images do not."""
    text = reason.lower()
    return any(word in text for word in (
        "not a dicom", "truncat", "unreadable", "cannot read", "corrupt", "decode", "pixel data", "not supported",
    ))
