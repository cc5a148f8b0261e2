"""Step 6: TID 1500 Comprehensive 3D SR per image: finding, class probabilities, score, SEG references; plus the
viewer SR (the lesion outline as an image region, which OHIF's SR viewport can show)."""

from __future__ import annotations

import pydicom

from monai_ultraad.dicom.viewer_sr import write_viewer_report
from monai_ultraad.dicom.writers import write_report

from ._dicom_outputs import (
    SourceWriterOperator,
    algorithm_info,
    frame_predictions,
    pixel_spacing_mm,
    source_dataset,
    uid_factory,
)
from .source_work import SourceWork


class SRWriterOperator(SourceWriterOperator):
    """Stages the measurement report referencing the source image and its (staged) BINARY SEG, and the viewer SR."""

    what = "SR"

    def write(self, work: SourceWork) -> None:
        result = work.result
        path = write_report(
            source_dataset(result), pydicom.dcmread(work.objects["seg_binary"], defer_size="64 KB"),  # not its pixels
            frame_predictions(result),
            result.model.threshold, work.staging, algorithm_info(result.model), uid_factory(self.uid_seed, result),
            pixel_spacing_mm=pixel_spacing_mm(result),  # the analysed region's spacing -> lesion area
            input_quality=result.quality.summary() if result.quality is not None else None,  # the input gate
        )
        work.add("sr", path)
        viewer = write_viewer_report(
            source_dataset(result), frame_predictions(result), result.model.threshold, work.staging,
            algorithm_info(result.model), uid_factory(self.uid_seed, result),
        )
        if viewer is not None:  # None: no lesion to outline
            work.add("sr_viewer", viewer)
