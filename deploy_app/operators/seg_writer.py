"""Step 5: DICOM SEG of each image's heatmaps: FRACTIONAL (probability) and BINARY (validation threshold)."""

from __future__ import annotations

from monai_ultraad.dicom.writers import write_segmentations

from ._dicom_outputs import (
    SourceWriterOperator,
    algorithm_info,
    frame_predictions,
    pixel_spacing_mm,
    source_dataset,
    uid_factory,
)
from .source_work import SourceWork


class SegWriterOperator(SourceWriterOperator):
    """Stages two SEG objects per source image (in the source study, new series, fresh UIDs); the BINARY one is
    recorded as ``seg_binary`` for the SR writer."""

    what = "SEG"

    def write(self, work: SourceWork) -> None:
        result = work.result
        fractional, binary = write_segmentations(
            source_dataset(result), frame_predictions(result), result.model.threshold, work.staging,
            algorithm_info(result.model), uid_factory(self.uid_seed, result), pixel_spacing_mm=pixel_spacing_mm(result),
        )
        work.add("seg_fractional", fractional)
        work.add("seg_binary", binary)
