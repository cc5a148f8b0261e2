"""Step 5: DICOM SEG of each image's heatmaps: FRACTIONAL (probability) and BINARY (validation threshold), source-
faithful; plus the viewer SEG(s) and Slicer .seg.nrrd in display geometry (monai_ultraad.dicom.viewer_seg)."""

from __future__ import annotations

from monai_ultraad.dicom.viewer_seg import write_viewer_segmentations
from monai_ultraad.dicom.writers import write_segmentations

from ._dicom_outputs import SourceWriterOperator, algorithm_info, frame_predictions, source_dataset, uid_factory
from .source_work import SourceWork


class SegWriterOperator(SourceWriterOperator):
    """Stages the SEG objects of one source image (in the source study, new series, fresh UIDs): the two
    source-faithful SEGs and the viewer SEG(s) with their .seg.nrrd; the BINARY one is recorded as ``seg_binary``
    for the SR writer."""

    what = "SEG"

    def write(self, work: SourceWork) -> None:
        result = work.result
        source, predictions, algorithm = source_dataset(result), frame_predictions(result), algorithm_info(result.model)
        fractional, binary = write_segmentations(
            source, predictions, result.model.threshold, work.staging, algorithm, uid_factory(self.uid_seed, result),
        )
        work.add("seg_fractional", fractional)
        work.add("seg_binary", binary)
        viewer = write_viewer_segmentations(
            source, predictions, result.model.threshold, work.staging, algorithm, uid_factory(self.uid_seed, result),
        )
        for index, path in enumerate(viewer):
            work.add(f"seg_viewer_{index}", path)
