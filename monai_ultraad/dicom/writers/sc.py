"""The heatmap overlay as a (Multi-frame True Color) Secondary Capture, marked derived, with burned-in annotation and
"not for primary diagnosis"."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import highdicom as hd
import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.writers.common import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    NOT_FOR_DIAGNOSIS_NOTE,
    AlgorithmInfo,
    UIDFactory,
    check_source,
    frames_referenceable,
    header_for_highdicom,
    number_of_frames,
    output_path,
    software_versions,
    stamp_creation_time,
    time_kwargs,
    truncate_lo,
    write_dataset,
)
from monai_ultraad.errors import InputDataError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Overlay
# ---------------------------------------------------------------------------------------------------------------------


def write_overlay(
    source: Dataset,
    overlay_rgb_frames: np.ndarray | Iterable[np.ndarray],
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int = 9004,
    frame_numbers: Sequence[int] | None = None,
) -> Path:
    """Write heatmap overlay frames as a Secondary Capture in a new series of the source study.

    One frame: Secondary Capture Image Storage, built by :class:`highdicom.sc.SCImage` (the only SC class highdicom
    has; it is single-frame). Several frames: Multi-frame True Color Secondary Capture Image Storage, built from the
    same highdicom object (which supplies every shared module) and then given the Multi-frame / SC Multi-frame Image
    module attributes by keyword, because highdicom has no multi-frame SC API. Frames are labelled by source frame
    (Frame Increment Pointer -> Frame Label Vector).

    The object is DERIVED\\SECONDARY, Burned In Annotation YES, references the source (frames), and its Image
    Comments and Series Description say "Derived heatmap overlay - not for primary diagnosis" (plus the
    random-weights warning when it applies).

    Args:
        source: the source image.
        overlay_rgb_frames: (rows, cols, 3) uint8 RGB frames: an iterable (e.g.
            :func:`monai_ultraad.visualize.iter_overlay_frames`, rendered one at a time while they are written) or an
            (F, rows, cols, 3) array (a (rows, cols, 3) array is taken as one frame).
        output_dir: folder to write into.
        algorithm: identity of the algorithm.
        uids: UID (and time) source.
        series_number: series number of the overlay.
        frame_numbers: source frame of each overlay frame (default 1..F).

    Returns:
        Path of ``overlay_<SOPInstanceUID>.dcm`` inside ``output_dir``.
    """
    check_source(source)
    numbers = None if frame_numbers is None else [int(f) for f in frame_numbers]
    n_source = number_of_frames(source)
    _check_frame_numbers(numbers or [], n_source)  # before any frame is rendered
    folder = Path(output_dir).resolve()  # where output_path puts the object ("a/b/.." is "a": no "b" is made)
    folder.mkdir(parents=True, exist_ok=True)
    # The frames' pixels are spooled into an anonymous file in the output (staging) folder as they come, and pydicom
    # copies them from there into the object in chunks: memory holds one frame, whatever the loop length. The file
    # has no name (TemporaryFile), so a kill leaves nothing behind.
    with tempfile.TemporaryFile(dir=folder) as pixels:
        first, n = _spool_frames(overlay_rgb_frames, pixels)
        numbers = numbers if numbers is not None else list(range(1, n + 1))
        if len(numbers) != n:
            raise InputDataError(f"{len(numbers)} frame numbers for {n} overlay frames")
        _check_frame_numbers(numbers, n_source)
        sc = _overlay_dataset(source, first, numbers, algorithm, uids, series_number)
        if n > 1:
            if pixels.tell() % 2:
                pixels.write(b"\x00")  # Pixel Data has an even length (PS3.5 8.1.1), padded as pydicom pads bytes
            pixels.seek(0)
            sc.PixelData = pixels  # buffered: written by pydicom without being loaded
        path = output_path(output_dir, "overlay", sc.SOPInstanceUID)
        write_dataset(sc, path)
    logger.info("wrote %d-frame overlay to %s", n, path)
    return path


def _check_frame_numbers(numbers: list[int], n_source: int) -> None:
    if any(not 1 <= f <= n_source for f in numbers):
        raise InputDataError(f"overlay frame numbers {numbers} are outside the source's frames 1..{n_source}")


def _spool_frames(frames: np.ndarray | Iterable[np.ndarray], pixels: BinaryIO) -> tuple[np.ndarray, int]:
    """Append the pixels of each (rows, cols, 3) uint8 frame to ``pixels``: (the first frame, the frame count)."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[np.newaxis]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise InputDataError(f"overlay frames must be (F, rows, cols, 3), got {frames.shape}")
    first, n = None, 0
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or (first is not None and frame.shape != first.shape):
            expected = "(rows, cols, 3)" if first is None else str(first.shape)
            raise InputDataError(f"overlay frame {n + 1} must be {expected}, got {frame.shape}")
        if frame.dtype != np.uint8:
            raise InputDataError(f"overlay frames must be uint8, got {frame.dtype}")
        if first is None:
            first = frame.copy()  # the frame highdicom builds the object from; the caller may reuse its buffer
        pixels.write(frame.data)
        n += 1
    if first is None:
        raise InputDataError("no overlay frames")
    return first, n


def _overlay_dataset(source: Dataset, first: np.ndarray, numbers: list[int], algorithm: AlgorithmInfo,
                     uids: UIDFactory, series_number: int) -> hd.sc.SCImage:
    """The overlay object with the first frame's pixels; a multi-frame one gets its Pixel Data from the caller."""
    n = len(numbers)
    when = uids.now()
    comment = NOT_FOR_DIAGNOSIS_NOTE
    if algorithm.random_weights:
        comment += f". {RANDOM_WEIGHTS_WARNING} - {NOT_FOR_CLINICAL_USE}"
    series_description = (
        "UltraAD overlay, RANDOM WEIGHTS, not for diagnosis"
        if algorithm.random_weights
        else (f"UltraAD {NOT_FOR_DIAGNOSIS_NOTE[0].lower()}{NOT_FOR_DIAGNOSIS_NOTE[1:]}")
    )
    sc = hd.sc.SCImage(
        pixel_array=first,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=uids.new("overlay-series", source.SOPInstanceUID),
        series_number=series_number,
        sop_instance_uid=uids.new("overlay-sop", source.SOPInstanceUID),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Patient and study attributes are copied from the source below (copy_patient_and_study_information), not
        # passed here: SCImage's checks would warn quoting the names.
        # highdicom insists on a biped orientation for the PATIENT coordinate system; ultrasound has none, so a
        # placeholder is passed and replaced below by the source's (usually empty, Type 2) Patient Orientation.
        patient_orientation=("A", "F"),
        manufacturer_model_name=truncate_lo(algorithm.display_name),
        software_versions=software_versions(algorithm),
        series_description=truncate_lo(series_description),
        specific_character_set=source.get("SpecificCharacterSet"),
        **time_kwargs(when),
    )
    sc.copy_patient_and_study_information(header_for_highdicom(source))
    sc.PatientOrientation = source.get("PatientOrientation", None)
    # General Series Laterality is Type 2C (dciodvfy requires it for SC without Image Laterality); highdicom accepts
    # only R/L, so the source's value - often empty for ultrasound - is copied by keyword.
    sc.Laterality = source.get("Laterality", None)
    stamp_creation_time(sc, when)
    # The attributes below have no highdicom API (SCImage covers the mandatory modules only); set by keyword.
    sc.DateOfSecondaryCapture = when.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    sc.BurnedInAnnotation = "YES"  # the heatmap (and whatever text the source had) is burned into the pixels
    sc.ImageComments = comment
    sc.DerivationDescription = truncate_lo(f"Lesion heatmap of {algorithm.display_name} blended over the source")
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frames_referenceable(source):
        reference.ReferencedFrameNumber = numbers if len(numbers) > 1 else numbers[0]
    sc.SourceImageSequence = [reference]

    if n > 1:
        # Multi-frame True Color SC IOD (PS3.3 A.8.5): Multi-frame module + SC Multi-frame Image/Vector modules.
        sc.SOPClassUID = pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage
        sc.file_meta.MediaStorageSOPClassUID = pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage
        sc.NumberOfFrames = n
        sc.FrameIncrementPointer = Tag("FrameLabelVector")
        sc.FrameLabelVector = [f"frame {f}"[:16] for f in numbers]  # SH: 16 characters
    return sc
