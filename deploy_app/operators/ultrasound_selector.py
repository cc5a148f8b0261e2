"""Step 2: check a source's identifiers and size, then open it for streamed decoding (every frame, or every n-th of a
cine loop; the frames are decoded one at a time by the inference step)."""

from __future__ import annotations

import os

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad.dicom.identifiers import InvalidUIDError, check_source_uids
from monai_ultraad.dicom.reader import UnsupportedDicomError, open_ultrasound

from .source_work import SourceWork

#: Working memory one source may claim (decoded frames, heatmaps, overlay: about 11 bytes per analysed pixel);
#: a header claiming more is refused before anything is allocated. ULTRAAD_MAX_SOURCE_MB overrides it.
DEFAULT_MAX_SOURCE_MB = 8192
BYTES_PER_ANALYSED_PIXEL = 11


class UltrasoundSelectorOperator(Operator):
    """Opens the source as an ``UltrasoundImage`` (header, ultrasound regions; frames decoded on demand).

    Refused, with one line: UIDs outside the UI value representation, and a header whose claimed size (rows x
    columns x frames kept) would need more than ULTRAAD_MAX_SOURCE_MB of working memory. A file that cannot be decoded
    (truncated, missing Pixel Data, no decoder) fails with its reason; the other files of the study go on.
    """

    def __init__(self, fragment: Fragment, *args, frame_step: int = 1, max_frames: int | None = None,
                 **kwargs) -> None:
        if frame_step < 1:
            raise ValueError("frame_step must be >= 1")
        self.frame_step, self.max_frames = frame_step, max_frames
        self.max_bytes = int(float(os.environ.get("ULTRAAD_MAX_SOURCE_MB", DEFAULT_MAX_SOURCE_MB)) * 2**20)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("source")
        spec.output("source")

    def compute(self, op_input, op_output, context) -> None:
        work: SourceWork = op_input.receive("source")
        try:
            self._read(work)
        except Exception as exc:  # noqa: BLE001 - whatever happens, the source is dropped whole and the study goes on
            work.fail(f"{type(exc).__name__}: {exc}")
        op_output.emit(work, "source")

    def kept_frames(self, number_of_frames: int) -> int:
        kept = len(range(0, max(number_of_frames, 1), self.frame_step))
        return min(kept, self.max_frames) if self.max_frames else kept

    def refuses_size(self, rows: int, cols: int, frames: int) -> bool:
        return rows * cols * frames * BYTES_PER_ANALYSED_PIXEL > self.max_bytes

    def _read(self, work: SourceWork) -> None:
        try:
            header = pydicom.dcmread(work.path, stop_before_pixels=True)
            for warning in check_source_uids(header):
                work.warnings.append(warning)
            rows, cols = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
            frames = self.kept_frames(int(header.get("NumberOfFrames") or 1))
        except InvalidUIDError as exc:
            work.fail(f"refused: {exc}")
            return
        except (ValueError, TypeError) as exc:
            work.fail(f"refused: unreadable Rows / Columns / Number of Frames ({type(exc).__name__})")
            return
        claimed = rows * cols * frames * BYTES_PER_ANALYSED_PIXEL
        if self.refuses_size(rows, cols, frames):
            work.fail(f"refused: the header claims {frames} frame(s) of {rows} x {cols}, about {claimed / 2**30:.1f} GiB "
                      f"of working memory (limit {self.max_bytes / 2**30:.1f} GiB, ULTRAAD_MAX_SOURCE_MB); "
                      "use --max-frames or --frame-step")
            return
        try:
            work.image = open_ultrasound(work.path, frame_step=self.frame_step, max_frames=self.max_frames)
        except UnsupportedDicomError as exc:
            reason = exc.reason
            if "modality" in reason.lower() or "sop class" in reason.lower():
                work.skip(reason)
            else:
                work.fail(reason)
