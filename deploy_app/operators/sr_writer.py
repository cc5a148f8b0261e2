"""Step 6: TID 1500 Comprehensive 3D SR per image: finding, class probabilities, score, SEG references."""

from __future__ import annotations

import pydicom

from monai_ultraad.dicom.writers import write_report

from ._dicom_outputs import SourceWriterOperator, algorithm_info, frame_predictions, source_dataset, uid_factory
from .source_work import SourceWork


class SRWriterOperator(SourceWriterOperator):
    """Stages the measurement report referencing the source image and its (staged) BINARY SEG."""

    what = "SR"

    def write(self, work: SourceWork) -> None:
        result = work.result
        path = write_report(
            source_dataset(result), pydicom.dcmread(work.objects["seg_binary"]), frame_predictions(result),
            result.model.threshold, work.staging, algorithm_info(result.model), uid_factory(self.uid_seed, result),
        )  # the SEG is read with pydicom: highdicom's reader refuses 2D pixel measures without slice thickness
        work.add("sr", path)
