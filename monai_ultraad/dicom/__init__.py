"""Ultrasound DICOM input: decode any ultrasound object to RGB frames with its calibrated regions.

``reader`` turns Ultrasound (Multi-frame) Image Storage files into :class:`UltrasoundImage` (RGB uint8 frames, the
Sequence of Ultrasound Regions, the header) and rejects everything else with :class:`UnsupportedDicomError`;
``synthetic`` wraps a plain RGB picture into a valid ultrasound object for tests and demos. The package is I/O
only: the model runs in :mod:`monai_ultraad.inference`, so reading DICOM does not pull in torch.
"""

from __future__ import annotations

from monai_ultraad.dicom.reader import (
    UNITS_CM,
    US_IMAGE_SOP_CLASSES,
    UltrasoundImage,
    UltrasoundRegion,
    UnsupportedDicomError,
    read_ultrasound,
    scan_folder,
)
from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

__all__ = [
    "UNITS_CM",
    "US_IMAGE_SOP_CLASSES",
    "UltrasoundImage",
    "UltrasoundRegion",
    "UnsupportedDicomError",
    "read_ultrasound",
    "scan_folder",
    "wrap_as_ultrasound",
]
