"""Wrap an RGB picture (e.g. a BUS-UCLM JPEG) into a valid Ultrasound Image Storage object.

Tests and demos need ultrasound DICOM files with a known answer (a lesion mask), and no public DICOM corpus has breast
lesions. This module builds one from a plain image: Ultrasound Image Storage for one frame, Ultrasound Multi-frame
Image Storage for several, Explicit VR Little Endian, RGB with Planar Configuration 0, every Type 1 and Type 2
attribute of the US (Multi-frame) Image IOD and, optionally, a Sequence of Ultrasound Regions with one 2D tissue
region calibrated in centimetres. The output passes ``dciodvfy`` (dicom3tools) without errors.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from monai_ultraad.errors import InputDataError

__all__ = ["US_IMAGE_STORAGE", "US_MULTIFRAME_IMAGE_STORAGE", "wrap_as_ultrasound"]

US_IMAGE_STORAGE = pydicom.uid.UltrasoundImageStorage
US_MULTIFRAME_IMAGE_STORAGE = pydicom.uid.UltrasoundMultiFrameImageStorage

_FRAME_TIME_TAG = 0x00181063  # (0018,1063) Frame Time: what the Frame Increment Pointer of a US cine points at
_UNITS_CM = 3  # Physical Units X/Y Direction code for centimetres (PS3.3 C.8.5.5.1.15)
_SPATIAL_FORMAT_2D = 1
_DATA_TYPE_TISSUE = 1


def wrap_as_ultrasound(
    image_rgb: np.ndarray | None,
    path: str | os.PathLike[str],
    *,
    patient_id: str = "ANON",
    study_uid: str | None = None,
    with_region: bool = True,
    pixel_spacing_mm: float = 0.1,
    region_bounds: Sequence[int] | None = None,
    frames: np.ndarray | None = None,
    frame_time_ms: float = 40.0,
    lossy_compression_method: str | None = None,
    laterality: str = "",
) -> Path:
    """Write ``image_rgb`` (or ``frames``) as an Ultrasound (Multi-frame) Image Storage object at ``path``.

    Args:
        image_rgb: (rows, cols, 3) uint8 RGB picture; ignored (may be ``None``) when ``frames`` is given.
        path: output file; parent folders are created.
        patient_id: Patient ID. Keep it synthetic: the object carries no real identity (Patient's Name is
            ``Synthetic^Anonymous``).
        study_uid: Study Instance UID (a new one when ``None``), to put several objects into one study.
        with_region: add a Sequence of Ultrasound Regions with one 2D tissue region calibrated in cm.
        pixel_spacing_mm: square pixel size of that region in millimetres (stored as cm: /10).
        region_bounds: ``(x0, y0, x1, y1)`` of the region, inclusive pixel bounds (DICOM's Max X1/Y1 are inclusive);
            default the whole image.
        frames: (F, rows, cols, 3) uint8 frames; when F > 1 the object is Ultrasound Multi-frame Image Storage.
        frame_time_ms: Frame Time of a multi-frame object (the Cine module needs it).
        lossy_compression_method: when the pixels went through lossy compression before (a JPEG source), its
            DICOM defined term, e.g. ``"ISO_10918_1"``; sets Lossy Image Compression to ``01`` as the standard asks.
        laterality: ``"L"`` or ``"R"`` when the breast's side is known; empty (unknown) by default.

    Returns:
        The path written.

    Raises:
        InputDataError: the pixels are not uint8 RGB, or the region bounds fall outside the image.
    """
    pixels = _as_frames(image_rgb, frames)
    n_frames, rows, cols, _ = pixels.shape
    multiframe = n_frames > 1
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multiframe else US_IMAGE_STORAGE
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_instance = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ULTRAAD_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient (all Type 2): synthetic identity only
    ds.PatientName = "Synthetic^Anonymous"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # General Series
    ds.Modality = "US"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    # Type 2C for paired body parts (a breast is one); empty means "unknown", which dciodvfy notes with a warning.
    if laterality not in ("", "L", "R"):
        raise InputDataError(f"laterality must be 'L', 'R' or '' (unknown), got {laterality!r}")
    ds.Laterality = laterality
    ds.SeriesDescription = "monai_ultraad synthetic ultrasound"
    # General Equipment
    ds.Manufacturer = "monai_ultraad"
    ds.ManufacturerModelName = "wrap_as_ultrasound"
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    # The pixels are not what a scanner stored: a picture re-wrapped into DICOM is derived, primary.
    ds.ImageType = ["DERIVED", "PRIMARY"]
    if lossy_compression_method:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = lossy_compression_method
    else:
        ds.LossyImageCompression = "00"
    # US Image / Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if multiframe:
        # Multi-frame + Cine modules: US cines step through time.
        ds.NumberOfFrames = n_frames
        ds.FrameIncrementPointer = _FRAME_TIME_TAG
        ds.FrameTime = f"{float(frame_time_ms):.6g}"
    if with_region:
        ds.SequenceOfUltrasoundRegions = DicomSequence([_tissue_region(rows, cols, pixel_spacing_mm, region_bounds)])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()  # 8-bit RGB, colour-by-pixel = Planar Configuration 0

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _as_frames(image_rgb: np.ndarray | None, frames: np.ndarray | None) -> np.ndarray:
    """(F, rows, cols, 3) uint8 from either argument, with a clear error for anything else."""
    pixels = frames if frames is not None else (None if image_rgb is None else np.asarray(image_rgb)[None])
    if pixels is None:
        raise InputDataError("wrap_as_ultrasound needs image_rgb or frames")
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.shape[0] < 1:
        raise InputDataError(
            f"wrap_as_ultrasound needs (rows, cols, 3) or (F, rows, cols, 3) pixels, got {pixels.shape}"
        )
    if pixels.dtype != np.uint8:
        raise InputDataError(f"wrap_as_ultrasound needs uint8 pixels, got {pixels.dtype}")
    return pixels


def _tissue_region(rows: int, cols: int, spacing_mm: float, bounds: Sequence[int] | None) -> Dataset:
    """One item of the Sequence of Ultrasound Regions: 2D tissue, square pixels of ``spacing_mm`` in cm units."""
    x0, y0, x1, y1 = (0, 0, cols - 1, rows - 1) if bounds is None else (int(b) for b in bounds)
    if not (0 <= x0 <= x1 < cols and 0 <= y0 <= y1 < rows):
        raise InputDataError(f"region bounds {(x0, y0, x1, y1)} (inclusive) do not fit a {rows}x{cols} image")
    if not spacing_mm > 0:
        raise InputDataError(f"pixel_spacing_mm must be > 0, got {spacing_mm}")
    item = Dataset()
    item.RegionSpatialFormat = _SPATIAL_FORMAT_2D
    item.RegionDataType = _DATA_TYPE_TISSUE
    item.RegionFlags = 0
    item.RegionLocationMinX0 = x0
    item.RegionLocationMinY0 = y0
    item.RegionLocationMaxX1 = x1
    item.RegionLocationMaxY1 = y1
    item.PhysicalUnitsXDirection = _UNITS_CM
    item.PhysicalUnitsYDirection = _UNITS_CM
    item.PhysicalDeltaX = float(spacing_mm) / 10.0
    item.PhysicalDeltaY = float(spacing_mm) / 10.0
    return item
