"""DICOM outputs of UltraAD: lesion SEGs, a TID 1500 measurement report and a secondary-capture overlay.

Every object is built with highdicom and lands in a *new series of the source study*:

* :func:`write_segmentations` - a FRACTIONAL (PROBABILITY, 0..255) SEG holding the lesion heatmap and a BINARY SEG
  holding ``heatmap >= threshold``; one segment "Lesion" (Morphologically abnormal structure / Neoplasm), one SEG
  frame per predicted source frame, each frame referencing its source frame (Derivation Image Sequence).
* :func:`write_report` - a Comprehensive 3D SR with a TID 1500 Measurement Report: one TID 1410 group per source
  frame that references the BINARY SEG frame, the predicted class (coded), the class probabilities, the anomaly score
  and the heatmap threshold; for cine loops also the maximum anomaly score over frames.
* :func:`write_overlay` - a (Multi-frame True Color) Secondary Capture of the heatmap overlay, marked derived, with
  burned-in annotation and "not for primary diagnosis".

One module per object, as highdicom lays out its packages: :mod:`.seg`, :mod:`.sr`, :mod:`.sc`; what they share
(algorithm identity, UIDs, checks, stamps, the atomic write) is in :mod:`.common`, the coded concepts in :mod:`.codes`.
Why the SEGs of ultrasound carry no Frame of Reference is told in :mod:`.seg`.

Nothing here logs patient or study attributes; only generated UIDs appear in file names and log lines.
"""

from monai_ultraad.dicom.writers.codes import LOCAL_CODING_SCHEME, class_code, concept
from monai_ultraad.dicom.writers.common import (
    NOT_FOR_DIAGNOSIS_NOTE,
    AlgorithmInfo,
    FramePrediction,
    UIDFactory,
    ultrasound_pixel_spacing_mm,
)
from monai_ultraad.dicom.writers.sc import write_overlay
from monai_ultraad.dicom.writers.seg import write_segmentations
from monai_ultraad.dicom.writers.sr import write_report

__all__ = [
    "LOCAL_CODING_SCHEME",
    "NOT_FOR_DIAGNOSIS_NOTE",
    "AlgorithmInfo",
    "FramePrediction",
    "UIDFactory",
    "class_code",
    "concept",
    "ultrasound_pixel_spacing_mm",
    "write_overlay",
    "write_report",
    "write_segmentations",
]
