"""Lesion SEGs of UltraAD: a FRACTIONAL (PROBABILITY) SEG of the heatmap and a BINARY SEG of ``heatmap >= threshold``.

Ultrasound without a Frame of Reference
---------------------------------------
Ultrasound images have no Frame of Reference and no plane position/orientation, so a SEG of them can only be tied to
its source pixel-for-pixel through the frame references of the Derivation Image Sequence (PS3.3 A.51.5.1).
highdicom 0.28 supports that for a *single* source frame only: for an Ultrasound Multi-frame source it raises
``ValueError: Only a single frame is supported when the source image has no Frame of Reference UID.`` (and with a
one-frame multi-frame source it fails looking for the Shared Functional Groups Sequence that only enhanced
multi-frame objects have). For multi-frame sources this module therefore subclasses
:class:`highdicom.seg.Segmentation` and replaces its spatial preparation step so that every SEG frame
references its own source frame (``ReferencedFrameNumber``); everything else (segment description, pixel encoding,
functional groups, references) is still highdicom's. (It also answers highdicom's pixel range check of its FRACTIONAL
array without the full sorted copy highdicom makes, which would double a cine's memory; same check, same outcome.)
Because the frames then differ in nothing highdicom indexes, a
second dimension, Frame Label (Frame Content Sequence), is added so that every frame has a unique Dimension Index
Values pair (segment, source frame).

dcmqi (and so 3D Slicer's DICOM SEG import) cannot convert such SEGs: it builds an ITK volume and needs patient
geometry (``Plane Orientation (Patient) is missing, cannot parse input`` / ``ERROR: Failed to get image
directions!``). Inventing a Frame of Reference and positions here would make the source-faithful SEG claim a patient
coordinate system the source does not have, so this module does not; and because PS3.3 Table A.51-2 allows Pixel
Measures only with a Frame of Reference (highdicom's ``segread`` refuses them otherwise), these SEGs carry none. The
region's physical spacing goes into the SR (lesion area) and into the *viewer SEG* of
:mod:`monai_ultraad.dicom.viewer_seg`, which places the mask in the display geometry Slicer and OHIF use.

A cine's SEG is built by highdicom a chunk of 16 frames at a time (:func:`_build_in_chunks`), its encoded frames
spooled to a file that becomes buffered Pixel Data: memory holds one chunk, whatever the loop length, and the object
is byte for byte the one highdicom builds from the whole loop.

Nothing here logs patient or study attributes; only generated UIDs appear in file names and log lines.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.writers.codes import lesion_category, lesion_type
from monai_ultraad.dicom.writers.common import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    SEGMENT_NUMBER,
    AlgorithmInfo,
    PredictionLike,
    UIDFactory,
    check_source,
    checked_predictions,
    frames_referenceable,
    header_for_highdicom,
    is_multiframe,
    no_patient_data_in_warnings,
    number_of_frames,
    output_path,
    restore_source_sop_class,
    software_versions,
    stamp_creation_time,
    time_kwargs,
    truncate_lo,
    write_dataset,
)
from monai_ultraad.errors import InputDataError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Segmentations
# ---------------------------------------------------------------------------------------------------------------------


class _SourceFrameSegmentation(hd.seg.Segmentation):
    """A highdicom Segmentation of selected frames of a multi-frame source without a Frame of Reference.

    highdicom 0.28 builds a SEG of a source without Frame of Reference from one source frame only (see the module
    docstring). Its constructor gets spatial metadata from one overridable step, ``_prepare_spatial_metadata``; this
    class answers that step for the no-coordinate-system case with one plane per SEG frame, no positions or
    orientation (none exist), the caller's pixel measures, and a Derivation Image item naming the source frame of each
    SEG frame. highdicom is handed a header-only copy of the source whose Number of Frames is 1, which passes its
    single-frame check; the frame references are built here from the real frame numbers.
    """

    def __init__(self, *, source_frame_numbers: Sequence[int], **kwargs: Any) -> None:
        # Set before super().__init__, which calls _prepare_spatial_metadata; a private name stays out of the dataset.
        self._ultraad_source_frames = [int(f) for f in source_frame_numbers]
        super().__init__(**kwargs)

    def _prepare_spatial_metadata(self, **kwargs: Any):  # type: ignore[override]
        if self._coordinate_system is not None:  # the source has geometry after all: highdicom knows what to do
            return super()._prepare_spatial_metadata(**kwargs)
        source = kwargs["source_images"][0]
        n_planes = int(kwargs["number_of_planes"])
        if tuple(kwargs["frame_shape"]) != (int(source.Rows), int(source.Columns)):
            raise ValueError("without a Frame of Reference, SEG frames must have the source frame size")
        if n_planes != len(self._ultraad_source_frames):
            raise ValueError(f"{n_planes} planes for {len(self._ultraad_source_frames)} source frames")
        derivation_items = [
            [self._get_derivation_source_image_item(source_image=source, frame_number=f, locations_preserved=True)]
            for f in self._ultraad_source_frames
        ]
        return (
            [None] * n_planes,  # no plane positions: there is no coordinate system to place them in
            None,  # no plane orientation, for the same reason
            None,  # no pixel measures: not allowed without a Frame of Reference
            np.empty((0,)),
            np.empty((0,)),
            np.arange(n_planes),  # SEG frames in the order of the source frames
            derivation_items,
        )


    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):  # type: ignore[override]
        # highdicom checks a floating-point array's range with np.unique, which sorts a copy of the whole loop (as
        # much memory again as the FRACTIONAL heatmaps: 1.2 MB per 480x640 frame). For what this class builds (one
        # segment, (F, rows, cols) float32) the same check is min/max without a copy, and the answer highdicom gives
        # a single segment (no overlap, array unchanged); anything else is left to highdicom.
        if (isinstance(pixel_array, np.ndarray) and pixel_array.ndim == 3 and pixel_array.dtype == np.float32
                and segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL and len(segment_numbers) == 1):
            if pixel_array.min() < 0.0 or pixel_array.max() > 1.0:
                raise ValueError("Floating point pixel array values must be in the range [0, 1].")
            return pixel_array, hd.seg.SegmentsOverlapValues.NO
        return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)


def _check_highdicom_hooks() -> None:
    """Fail clearly if highdicom no longer has the private steps _SourceFrameSegmentation relies on."""
    needed = ("_prepare_spatial_metadata", "_get_derivation_source_image_item", "_init_multiframe_image",
              "_check_and_cast_pixel_array")
    missing = [name for name in needed if not hasattr(hd.seg.Segmentation, name)]
    if missing:
        raise RuntimeError(
            f"highdicom {hd.__version__} lacks {missing}: SEGs of multi-frame sources without Frame of Reference were "
            "written with highdicom 0.28; check monai_ultraad.dicom.writers.seg._SourceFrameSegmentation against it"
        )


def _add_source_frame_dimension(seg: Dataset, uids: UIDFactory) -> None:
    """Index the SEG frames by source frame: Frame Label dimension + unique Dimension Index Values per frame.

    highdicom has no API to add a dimension; the attributes are set through pydicom keywords. The label dimension
    (Frame Content Sequence > Frame Label) is what highdicom itself uses when nothing spatial can index frames.
    """
    organization_uid = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    index = Dataset()
    index.DimensionOrganizationUID = organization_uid
    index.DimensionIndexPointer = Tag("FrameLabel")
    index.FunctionalGroupPointer = Tag("FrameContentSequence")
    index.DimensionDescriptionLabel = "Source frame"
    seg.DimensionIndexSequence.append(index)
    for position, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        source_frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        content = item.FrameContentSequence[0]
        # highdicom indexed the segment only (one value, 1); the source-frame index follows it.
        content.DimensionIndexValues = [SEGMENT_NUMBER, position]
        content.FrameLabel = f"source frame {source_frame}"


def _drop_frame_numbers_of_single_frame_class(seg: Dataset) -> None:
    """Remove the source frame numbers of the Derivation Image references of a source whose SOP class is single-frame.

    Referenced Frame Number "shall not be present" for a Referenced SOP Class that is not multi-frame (dciodvfy reports
    it as an error); the Frame Label added by :func:`_add_source_frame_dimension` still says which frame each SEG
    frame shows. highdicom has no option for this, hence the keyword edit.
    """
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for reference in derivation.get("SourceImageSequence", []):
                if "ReferencedFrameNumber" in reference:
                    del reference.ReferencedFrameNumber


def set_deterministic_dimension_uid(seg: Dataset, uid: str) -> None:
    """Replace the Dimension Organization UID highdicom draws at random (reproducible files need every UID fixed)."""
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = uid


def segment_description(algorithm: AlgorithmInfo, tracking_uid: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label="Lesion",
        segmented_property_category=lesion_category(),
        segmented_property_type=lesion_type(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.segmentation_identification(),
        tracking_uid=tracking_uid,
        tracking_id="UltraAD lesion",
    )


#: SEG frames highdicom builds at a time for a cine (see :func:`_build_in_chunks`). A multiple of 16: a BINARY chunk's
#: bit-packed pixels then fill whole bytes, an even number of them, whatever the frame size.
SEG_CHUNK_FRAMES = 16
#: A FRACTIONAL SEG's value for probability 1.
MAX_FRACTIONAL_VALUE = 255


def _segmentation_arguments(
    source: Dataset,
    segmentation_type: hd.seg.SegmentationTypeValues,
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int,
    when: _dt.datetime,
    tracking_uid: str,
) -> dict[str, Any]:
    """highdicom's Segmentation arguments of one of the two SEGs, except the pixels and source images."""
    kind = segmentation_type.value.lower()
    source_uid = source.SOPInstanceUID
    description = "UltraAD lesion probability" if kind == "fractional" else "UltraAD lesion mask"
    if algorithm.random_weights:
        description += " (RANDOM WEIGHTS)"
    arguments: dict[str, Any] = dict(
        segmentation_type=segmentation_type,
        segment_descriptions=[segment_description(algorithm, tracking_uid)],
        series_instance_uid=uids.new(f"seg-{kind}-series", source_uid),
        series_number=series_number,
        sop_instance_uid=uids.new(f"seg-{kind}-sop", source_uid),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=truncate_lo(algorithm.display_name),
        software_versions=software_versions(algorithm),
        device_serial_number=truncate_lo(algorithm.weights_id),
        content_description=truncate_lo(description),
        content_label="LESION" if kind == "binary" else "LESION_PROB",
        series_description=truncate_lo(description),
        # No pixel_measures: without a Frame of Reference the Pixel Measures macro is not allowed (module docstring);
        # a source with one has its own, which highdicom copies.
        # The binary SEG keeps a frame for every predicted source frame so that SR groups and frames line up; the
        # fractional one may drop all-zero frames (a reader gets zeros for them either way).
        omit_empty_frames=segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL,
        **time_kwargs(when),
    )
    if segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        arguments["fractional_type"] = hd.seg.SegmentationFractionalTypeValues.PROBABILITY
        arguments["max_fractional_value"] = MAX_FRACTIONAL_VALUE
    return arguments


def _source_frame_segmentation(source: Dataset, frame_numbers: list[int], pixel_array: np.ndarray,
                               arguments: dict[str, Any]) -> hd.seg.Segmentation:
    """highdicom's SEG of the given frames of a multi-frame source without a Frame of Reference."""
    _check_highdicom_hooks()
    header = header_for_highdicom(source)
    header.NumberOfFrames = 1  # see _SourceFrameSegmentation: passes highdicom's single-frame check
    with no_patient_data_in_warnings():
        return _SourceFrameSegmentation(source_frame_numbers=frame_numbers, source_images=[header],
                                        pixel_array=pixel_array, **arguments)


def _fractional_frames_kept(preds: Sequence[PredictionLike]) -> list[int]:
    """Positions of the frames highdicom keeps in a FRACTIONAL SEG with ``omit_empty_frames``: those whose encoded
    values are not all zero (the same rounding as highdicom's), or every frame when all are (highdicom then keeps all)."""
    kept = [
        i for i, p in enumerate(preds)
        if np.any(np.around(_clipped(p.heatmap) * float(MAX_FRACTIONAL_VALUE)).astype(np.uint8))
    ]
    return kept or list(range(len(preds)))


def _build_in_chunks(
    source: Dataset,
    preds: Sequence[PredictionLike],
    threshold: float,
    arguments: dict[str, Any],
    pixels: BinaryIO,
    chunk_frames: int,
) -> hd.seg.Segmentation:
    """The SEG of a cine without a Frame of Reference, built by highdicom ``chunk_frames`` frames at a time.

    highdicom 0.28 takes a SEG's frames as one array and keeps their encoded pixels in memory (for a 480x640 cine
    1.5 MB a frame as float32 input and encoded frames). Here highdicom builds each chunk of frames as a SEG of its
    own, with the same arguments; the first chunk's object is kept as the result, every chunk's per-frame functional
    groups are appended to it and its encoded frames are appended to ``pixels`` (a file), which becomes the result's
    buffered Pixel Data. Memory then holds one chunk of pixels, and per frame only its functional group. What
    highdicom's ``omit_empty_frames`` drops from a FRACTIONAL SEG is chosen beforehand over the whole loop, as
    highdicom chooses it, and each chunk is built from the kept frames only. The result is element for element the
    object highdicom builds from the whole loop at once (tests/dicom/test_seg_chunks.py).
    """
    if chunk_frames % 16:
        raise ValueError("chunk_frames must be a multiple of 16 (BINARY frames are bit-packed across frames)")
    binary = arguments["segmentation_type"] == hd.seg.SegmentationTypeValues.BINARY
    kept = list(range(len(preds))) if binary else _fractional_frames_kept(preds)
    arguments = {**arguments, "omit_empty_frames": False}  # the empty frames are already left out
    pixels_per_frame = int(source.Rows) * int(source.Columns)
    base: hd.seg.Segmentation | None = None
    groups: list[Dataset] = []
    written = 0
    for start in range(0, len(kept), chunk_frames):
        chunk = [preds[i] for i in kept[start:start + chunk_frames]]
        array = _mask_stack(chunk, threshold) if binary else _heatmap_stack(chunk)
        seg = _source_frame_segmentation(source, [int(p.frame_number) for p in chunk], array, arguments)
        del array
        if int(seg.NumberOfFrames) != len(chunk):
            raise RuntimeError(f"highdicom built {seg.NumberOfFrames} SEG frames of {len(chunk)}")
        size = -(-len(chunk) * pixels_per_frame // 8) if binary else len(chunk) * pixels_per_frame
        pixels.write(seg.PixelData[:size])  # without highdicom's pad byte of an odd length
        written += size
        groups.extend(seg.PerFrameFunctionalGroupsSequence)
        if base is None:
            base = seg
        del seg
    assert base is not None  # preds is not empty (checked_predictions)
    base.PerFrameFunctionalGroupsSequence = groups
    base.NumberOfFrames = len(kept)
    if written % 2:
        pixels.write(b"0")  # highdicom's pad byte of an odd-length Pixel Data
    pixels.seek(0)
    base.PixelData = pixels  # buffered: pydicom copies it into the file without loading it
    return base


def _build_segmentation(
    source: Dataset,
    preds: Sequence[PredictionLike],
    threshold: float,
    arguments: dict[str, Any],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    when: _dt.datetime,
    pixels: BinaryIO,
    chunk_frames: int | None,
) -> hd.seg.Segmentation:
    """One of the two SEGs from its highdicom ``arguments`` (:func:`_segmentation_arguments`)."""
    kind = arguments["segmentation_type"].value.lower()
    source_uid = source.SOPInstanceUID
    frame_numbers = [int(p.frame_number) for p in preds]
    binary = arguments["segmentation_type"] == hd.seg.SegmentationTypeValues.BINARY

    if is_multiframe(source) and hd.spatial.get_image_coordinate_system(source) is None:
        if chunk_frames is None:  # the whole loop in one highdicom call (what the chunks are tested against)
            array = _mask_stack(preds, threshold) if binary else _heatmap_stack(preds)
            seg = _source_frame_segmentation(source, frame_numbers, array, arguments)
            del array
        else:
            seg = _build_in_chunks(source, preds, threshold, arguments, pixels, chunk_frames)
        _add_source_frame_dimension(seg, uids)
        if not frames_referenceable(source):
            _drop_frame_numbers_of_single_frame_class(seg)
    else:
        if is_multiframe(source) and frame_numbers != list(range(1, number_of_frames(source) + 1)):
            # highdicom copies one plane position per source frame; it cannot skip frames of a source with geometry.
            raise InputDataError("a multi-frame source with a Frame of Reference needs a prediction for every frame")
        array = _mask_stack(preds, threshold) if binary else _heatmap_stack(preds)
        with no_patient_data_in_warnings():
            seg = hd.seg.Segmentation(source_images=[header_for_highdicom(source)], pixel_array=array, **arguments)
        del array
    restore_source_sop_class(seg, source)

    if uids.deterministic:
        set_deterministic_dimension_uid(seg, uids.new(f"seg-{kind}-dimension-organization", source_uid))
    stamp_creation_time(seg, when)
    # General Image: Patient Orientation is Type 2C, required without Image Orientation (Patient) - as here. highdicom
    # sets it only for images with geometry, so it is copied from the source (usually empty for ultrasound).
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", None)
    # Content Creator's Name is Type 2 in DCMTK's (dcmqi's) Content Identification Macro; an automatic segmentation
    # has no person to name, so it is present and empty.
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = None
    if algorithm.random_weights:
        seg.ImageComments = f"{RANDOM_WEIGHTS_WARNING} - {NOT_FOR_CLINICAL_USE}"
    return seg


def write_segmentations(
    source: Dataset,
    predictions: Sequence[PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number_start: int = 9001,
    chunk_frames: int | None = SEG_CHUNK_FRAMES,
) -> tuple[Path, Path]:
    """Write the lesion heatmap as a FRACTIONAL SEG and ``heatmap >= threshold`` as a BINARY SEG.

    Args:
        source: the full source image (single- or multi-frame ultrasound); only its metadata is used.
        predictions: one prediction per analysed source frame (any subset of the frames), heatmaps in the full frame
            geometry (arrays, or array-likes such as :class:`monai_ultraad.heatmap_spool.SpooledHeatmap`: each is read
            a frame at a time).
        threshold: heatmap value from which a pixel belongs to the lesion mask.
        output_dir: folder to write into (created when missing).
        algorithm: identity of the algorithm, recorded in the segment description.
        uids: UID (and time) source.
        series_number_start: series number of the FRACTIONAL SEG; the BINARY SEG gets the next one.
        chunk_frames: a cine's SEG frames built at a time (:func:`_build_in_chunks`; a multiple of 16); ``None``:
            the whole loop in one highdicom call, holding it all in memory (same objects).

    Returns:
        ``(fractional_path, binary_path)``, named ``seg_fractional_<SOPInstanceUID>.dcm`` and
        ``seg_binary_<SOPInstanceUID>.dcm`` inside ``output_dir``.

    Raises:
        InputDataError: predictions that do not fit the source (frame numbers, heatmap shapes or values).
    """
    check_source(source)
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputDataError(f"threshold must lie in [0, 1], got {threshold}")
    preds = checked_predictions(source, predictions)
    when = uids.now()
    tracking_uid = uids.new("lesion-tracking", source.SOPInstanceUID)
    folder = Path(output_dir).resolve()  # where output_path puts the objects ("a/b/.." is "a": no "b" is made)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset, kind in enumerate((hd.seg.SegmentationTypeValues.FRACTIONAL, hd.seg.SegmentationTypeValues.BINARY)):
        # A cine's encoded frames go into an unnamed file in the output folder (nothing left behind by a kill); the
        # object is then serialised straight into its own temporary file and renamed (write_dataset).
        with tempfile.TemporaryFile(dir=folder) as pixels:
            arguments = _segmentation_arguments(source, kind, algorithm, uids, series_number_start + offset, when,
                                                tracking_uid)
            seg = _build_segmentation(source, preds, threshold, arguments, algorithm, uids, when, pixels, chunk_frames)
            path = output_path(output_dir, f"seg_{kind.value.lower()}", seg.SOPInstanceUID)
            paths.append(write_dataset(seg, path))
            logger.info("wrote %s SEG with %d frame(s) to %s", kind.value, int(seg.NumberOfFrames), path)
            del seg  # its encoded frames, before the next SEG is built
    return paths[0], paths[1]


def _clipped(heatmap: Any) -> np.ndarray:
    return np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)


def _heatmap_stack(predictions: Sequence[PredictionLike]) -> np.ndarray:
    """(F, rows, cols) float32 heatmaps clipped to [0, 1] (what the FRACTIONAL SEG encodes)."""
    heat = np.empty((len(predictions), *np.shape(predictions[0].heatmap)), np.float32)  # np.shape: a spooled one unread
    for i, p in enumerate(predictions):
        heat[i] = p.heatmap
    return np.clip(heat, 0.0, 1.0, out=heat)


def _mask_stack(predictions: Sequence[PredictionLike], threshold: float) -> np.ndarray:
    """(F, rows, cols) uint8 ``heatmap >= threshold``, compared in float32 after clipping (as the SR counts it)."""
    mask = np.empty((len(predictions), *np.shape(predictions[0].heatmap)), np.uint8)
    for i, p in enumerate(predictions):
        mask[i] = _clipped(p.heatmap) >= float(threshold)
    return mask


