"""Step 7: colour heatmap overlay as a DICOM Secondary Capture, for PACS viewers without SEG support."""

from __future__ import annotations

import numpy as np

from monai_ultraad.dicom.writers import write_overlay
from monai_ultraad.visualize import overlay_heatmap

from ._dicom_outputs import SourceWriterOperator, algorithm_info, source_dataset, uid_factory
from .source_work import SourceWork


class OverlayWriterOperator(SourceWriterOperator):
    """Stages one Secondary Capture per image: every analysed frame with the heatmap blended in and a contour at the
    validation threshold; derived, not for primary diagnosis."""

    what = "overlay"

    def write(self, work: SourceWork) -> None:
        result = work.result
        frames = np.empty(result.image.frames.shape, np.uint8)  # filled frame by frame: no list of copies
        for i, f in enumerate(result.frames):
            frames[i] = overlay_heatmap(result.image.frames[i], f.heatmap, threshold=result.model.threshold)
        path = write_overlay(source_dataset(result), frames, work.staging, algorithm_info(result.model),
                             uid_factory(self.uid_seed, result), frame_numbers=[f.frame_number for f in result.frames])
        work.add("overlay", path)
