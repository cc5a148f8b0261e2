"""Step 7: colour heatmap overlay as a DICOM Secondary Capture, for PACS viewers without SEG support."""

from __future__ import annotations

from monai_ultraad.dicom.writers import write_overlay
from monai_ultraad.visualize import iter_overlay_frames

from ._dicom_outputs import SourceWriterOperator, algorithm_info, source_dataset, uid_factory
from .source_work import SourceWork


class OverlayWriterOperator(SourceWriterOperator):
    """Stages one Secondary Capture per image: every analysed frame with the heatmap blended in and a contour at the
    validation threshold; derived, not for primary diagnosis."""

    what = "overlay"

    def write(self, work: SourceWork) -> None:
        result = work.result
        # the source frames are decoded again, one at a time (the inference step kept none of them), and each
        # overlay frame is rendered as the writer spools it to disk: one frame in memory whatever the loop length
        frames = iter_overlay_frames(result.image.iter_frames(), [p.heatmap for p in result.predictions],
                                     result.model.threshold)
        path = write_overlay(source_dataset(result), frames, work.staging, algorithm_info(result.model),
                             uid_factory(self.uid_seed, result),
                             frame_numbers=[p.frame_number for p in result.predictions])
        work.add("overlay", path)
