"""Step 1: find the ultrasound images of the study folder, then hand them on one source at a time."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.reader import scan_folder

from . import shutdown
from .run_report import RunReport
from .source_work import SourceWork

logger = logging.getLogger("ultraad.deploy")


class InFlight:
    """How many sources are between the loader and the publisher (the loader starts the next one at zero)."""

    def __init__(self) -> None:
        self.count = 0


def find_sources(input_folder: Path, report: RunReport) -> list[Path]:
    """The candidate ultrasound files under ``input_folder`` (headers only); every other entry goes into ``report``:
    files that are not DICOM at all (a README, a manifest, an empty file) and DICOMDIR are *skipped* with their
    reason, like other modalities and SEG/SR objects; DICOM files that are damaged (truncated, corrupt) *failed*."""
    if not input_folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_folder}")
    candidates, excluded = scan_folder(input_folder)
    for path, reason in excluded:
        if path.is_file() and path.stat().st_size == 0:
            report.skip(path, "empty file (0 bytes): not a DICOM file")
        elif path.name.upper() == "DICOMDIR":
            report.skip(path, f"DICOMDIR (a media directory, not an image): {reason}")
        elif is_failure(reason):
            report.fail(path, reason)
        else:
            report.skip(path, reason)
    return candidates


def is_failure(reason: str) -> bool:
    """DICOM files that cannot be used count as failures; files that are not DICOM images at all do not."""
    text = reason.lower()
    if text.startswith("not a dicom file"):
        return False
    return any(word in text for word in (
        "truncat", "unreadable", "cannot read", "corrupt", "decode", "pixel data", "not supported",
    ))


class StudyLoaderOperator(Operator):
    """Emits the sources found by :func:`find_sources` on ``source``, one at a time: the next only once the previous
    one has been published or dropped (so memory holds one source), and none after SIGTERM/SIGINT."""

    def __init__(self, fragment: Fragment, *args, sources: list[Path], report: RunReport, in_flight: InFlight,
                 **kwargs) -> None:
        self.sources, self.report, self.in_flight = list(sources), report, in_flight
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("source")

    def compute(self, op_input, op_output, context) -> None:
        if self.in_flight.count:
            return
        if shutdown.requested():
            for path in self.sources:
                self.report.not_start(path)
            if self.sources:
                logger.warning("%d source(s) not started", len(self.sources))
            self.report.stopped_by = shutdown.received[0] if shutdown.received else "signal"
            self.sources = []
        if not self.sources:
            self.stop_execution()
            return
        path = self.sources.pop(0)
        self.in_flight.count += 1
        op_output.emit(SourceWork(path, self.report.name(path)), "source")
