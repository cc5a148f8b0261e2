"""A BINARY SEG that 3D Slicer (dcmqi) and OHIF (cornerstone3D) display over the ultrasound image.

The source-faithful SEGs of :mod:`monai_ultraad.dicom.writers` are tied to their ultrasound source only through the
frame references of the Derivation Image Sequence, because ultrasound has no patient coordinate system. The viewers
cannot use that: dcmqi builds an ITK volume from Plane Orientation, Plane Position and Pixel Measures ("Plane
Orientation (Patient) is missing"), and OHIF reads them per frame. This module writes a *viewer SEG* beside them whose
geometry is the one the viewers themselves give the ultrasound image, in a new Frame of Reference of its own:

* Plane Orientation (Patient) (1, 0, 0, 0, 1, 0), Plane Position (0, 0, 0): pixel (column i, row j) at (i * dx, j * dy,
  0) mm - origin 0, identity direction, which is how 3D Slicer's DICOM image-sequence plugin
  (Modules/Scripted/DICOMPlugins/DICOMImageSequencePlugin.py) places ultrasound (in LPS; Slicer's RAS flip applies to
  both alike);
* Pixel Spacing from the single calibrated 2D tissue region, by Slicer's rule (:func:`display_pixel_spacing_mm`):
  exactly one region, spatial format 2D, data type tissue or colour flow, both axes in cm. Without one, a unit spacing
  of 1 mm, stated in the series description ("uncalibrated") - Slicer then uses 1 as well;
* Slice Thickness 1 mm (nominal: a 2D ultrasound frame has none, dcmqi and highdicom's reader need one);
* the Derivation Image Sequence still names the source (frame) of every SEG frame, Spatial Locations Preserved YES:
  the SEG pixel grid is the source pixel grid.

Cine loops: Slicer loads a multi-frame ultrasound as a *sequence of 2D frames*, each at origin 0 (not as a z stack),
and OHIF shows the frames in one viewport, one at a time. dcmqi (so Slicer) turns one SEG into one volume and has no
time axis, and highdicom refuses two frames at one position. So a cine gets one viewer SEG per analysed frame: every
file is a single 2D frame at origin 0 that Slicer overlays on each frame of the sequence and OHIF on the source frame
it references; the series (one per source) holds them in frame order (Instance Number = position among the analysed
frames) and each names its source frame in the segment label and content description.

The pixel data are ``heatmap >= threshold`` (what the source-faithful BINARY SEG holds); one segment "Lesion".
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.slicer_seg import write_slicer_segmentation

# The source-faithful writers' helpers are reused so that both SEG kinds carry the same segment, algorithm, equipment,
# time stamps and output-path rules.
from monai_ultraad.dicom.writers.common import (
    MANUFACTURER,
    AlgorithmInfo,
    PredictionLike,
    UIDFactory,
    check_source,
    checked_predictions,
    frames_referenceable,
    header_for_highdicom,
    is_multiframe,
    no_patient_data_in_warnings,
    output_path,
    restore_source_sop_class,
    software_versions,
    stamp_creation_time,
    time_kwargs,
    truncate_lo,
    write_dataset,
)
from monai_ultraad.dicom.writers.seg import segment_description, set_deterministic_dimension_uid
from monai_ultraad.errors import InputDataError

__all__ = ["DISPLAY_GEOMETRY_NOTE", "display_pixel_spacing_mm", "write_viewer_segmentations"]

logger = logging.getLogger(__name__)

#: Said in the series description, the content description and the image comments of every viewer SEG.
DISPLAY_GEOMETRY_NOTE = "in-plane geometry derived for display"

#: Plane Orientation (Patient) of every viewer SEG frame: rows along +x, columns along +y.
DISPLAY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

#: Slice thickness (mm) stated for a 2D frame, which has none.
NOMINAL_SLICE_THICKNESS_MM = 1.0

_UNITS_CM = 3
_SPATIAL_FORMAT_2D = 1
_DATA_TYPES_SLICER_CALIBRATES = (1, 2)  # tissue, colour flow (DICOMImageSequencePlugin)


def display_pixel_spacing_mm(source: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm with which 3D Slicer displays ``source``, or ``None`` when it uses 1.

    Slicer's DICOMImageSequencePlugin takes the spacing from the Sequence of Ultrasound Regions only when there is
    exactly one region, 2D (Region Spatial Format 1), tissue or colour flow (Region Data Type 1 or 2), with both
    physical units in cm; it then sets x = Physical Delta X * 10, y = Physical Delta Y * 10. Otherwise the spacing
    comes from the image reader, which for ultrasound without Pixel Spacing is 1.
    """
    regions = source.get("SequenceOfUltrasoundRegions", None) or []
    if len(regions) == 1:
        region = regions[0]
        if (
            region.get("RegionSpatialFormat") == _SPATIAL_FORMAT_2D
            and region.get("RegionDataType") in _DATA_TYPES_SLICER_CALIBRATES
            and region.get("PhysicalUnitsXDirection") == _UNITS_CM
            and region.get("PhysicalUnitsYDirection") == _UNITS_CM
        ):
            dx, dy = abs(float(region.get("PhysicalDeltaX", 0) or 0)), abs(float(region.get("PhysicalDeltaY", 0) or 0))
            if dx > 0 and dy > 0:
                return dy * 10.0, dx * 10.0
    if "PixelSpacing" in source and len(source.PixelSpacing) == 2:
        row, col = (float(v) for v in source.PixelSpacing)
        if row > 0 and col > 0:
            return row, col
    return None


class _DisplayGeometrySegmentation(hd.seg.Segmentation):
    """A highdicom Segmentation of one frame of a source without patient geometry, placed in display geometry.

    highdicom copies plane positions from the source or checks given ones against it; an ultrasound source has none
    to copy or check against. Its constructor gets the spatial metadata from one overridable step,
    ``_prepare_spatial_metadata``; this class answers it with the display plane (origin 0), the given orientation and
    pixel measures, and a Derivation Image item naming the source frame. Everything else is highdicom's.
    """

    def __init__(self, *, source_frame_number: int | None, **kwargs: Any) -> None:
        self._ultraad_source_frame = source_frame_number  # read by _prepare_spatial_metadata during super().__init__
        super().__init__(**kwargs)

    def _prepare_spatial_metadata(self, **kwargs: Any):  # type: ignore[override]
        source = kwargs["source_images"][0]
        if int(kwargs["number_of_planes"]) != 1:
            raise ValueError("a viewer SEG holds one 2D frame")
        if tuple(kwargs["frame_shape"]) != (int(source.Rows), int(source.Columns)):
            raise ValueError("a viewer SEG frame has the source frame size")
        position = hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT, image_position=(0.0, 0.0, 0.0)
        )
        derivation = self._get_derivation_source_image_item(
            source_image=source, frame_number=self._ultraad_source_frame, locations_preserved=True
        )
        return (
            [position],
            kwargs["plane_orientation"],
            kwargs["pixel_measures"],
            np.zeros((1, 3)),
            np.empty((0,)),
            np.arange(1),
            [[derivation]],
        )


def _display_header(source: Dataset, frame_of_reference_uid: str) -> Dataset:
    """Header-only copy of the source with the new Frame of Reference (highdicom copies it into the SEG)."""
    header = header_for_highdicom(source)  # conformant values; a retired SOP class looked up as the current one
    header.FrameOfReferenceUID = frame_of_reference_uid
    header.PositionReferenceIndicator = None  # Type 2: no anatomical reference point
    # highdicom decides "patient coordinate system" from a position at the root; the SEG's own geometry is set in
    # _DisplayGeometrySegmentation, these values are not copied.
    header.ImagePositionPatient = [0.0, 0.0, 0.0]
    header.ImageOrientationPatient = list(DISPLAY_ORIENTATION)
    if is_multiframe(source):
        header.NumberOfFrames = 1  # one frame per viewer SEG; the frame reference is built from the real number
    return header


def write_viewer_segmentations(
    source: Dataset,
    predictions: Sequence[PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int = 9005,
    slicer_files: bool = True,
) -> list[Path]:
    """Write ``heatmap >= threshold`` as BINARY viewer SEG(s) in display geometry (see the module docstring).

    Args:
        source: the source image (single- or multi-frame ultrasound); only its metadata is used.
        predictions: one prediction per analysed source frame, heatmaps in the full frame geometry.
        threshold: heatmap value from which a pixel belongs to the lesion.
        output_dir: folder to write into.
        algorithm: identity of the algorithm.
        uids: UID (and time) source.
        series_number: series number of the viewer SEG series.
        slicer_files: also write each mask as 3D Slicer's own segmentation file, ``seg_viewer_<uid>.seg.nrrd``
            beside its SEG, in the same geometry (:mod:`monai_ultraad.dicom.slicer_seg`).

    Returns:
        Nothing for a source with a patient Frame of Reference (its source-faithful SEGs carry real geometry).
        Otherwise the paths written, per prediction in source frame order: ``seg_viewer_<SOPInstanceUID>.dcm`` (and its
        ``.seg.nrrd``); one prediction for a single-frame source.
    """
    check_source(source)
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputDataError(f"threshold must lie in [0, 1], got {threshold}")
    if hd.spatial.get_image_coordinate_system(source) is not None:
        logger.info("source has a Frame of Reference: its source-faithful SEGs display as they are; no viewer SEG")
        return []
    preds = checked_predictions(source, predictions)
    spacing = display_pixel_spacing_mm(source)
    calibrated = spacing is not None
    row_mm, col_mm = spacing if calibrated else (1.0, 1.0)
    pixel_measures = hd.PixelMeasuresSequence(
        pixel_spacing=[row_mm, col_mm], slice_thickness=NOMINAL_SLICE_THICKNESS_MM
    )
    orientation = hd.PlaneOrientationSequence(
        coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=DISPLAY_ORIENTATION
    )
    source_uid = source.SOPInstanceUID
    multiframe = is_multiframe(source)
    header = _display_header(source, uids.new("viewer-seg-frame-of-reference", source_uid))
    series_uid = uids.new("seg-viewer-series", source_uid)
    tracking_uid = uids.new("lesion-tracking", source_uid)  # the same lesion as in the source-faithful SEGs
    calibration = "region spacing" if calibrated else "uncalibrated, unit spacing"
    # LO holds 64 characters: the calibration is spelled out in the Image Comments.
    series_description = f"UltraAD lesion, {DISPLAY_GEOMETRY_NOTE}"
    if algorithm.random_weights:
        series_description = "UltraAD lesion (RANDOM WEIGHTS), geometry derived for display"
    when = uids.now()
    paths = []
    for instance, p in enumerate(preds, start=1):
        frame = int(p.frame_number)
        mask = (np.clip(np.asarray(p.heatmap, dtype=np.float32), 0.0, 1.0) >= float(threshold)).astype(np.uint8)
        description = hd.seg.SegmentDescription.from_dataset(segment_description(algorithm, tracking_uid))
        # highdicom's display_color parameter is not used by the shared segment_description: set here (red).
        description.RecommendedDisplayCIELabValue = list(hd.color.CIELabColor.from_string("red").value)
        if multiframe:
            description.SegmentDescription = f"Lesion, source frame {frame}"
        with no_patient_data_in_warnings():
            seg = _DisplayGeometrySegmentation(
                # frame numbers only for multi-frame SOP classes (PS3.3 10.3); the description names the frame
                source_frame_number=frame if multiframe and frames_referenceable(source) else None,
                source_images=[header],
                pixel_array=mask[np.newaxis],
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=series_uid,
                series_number=series_number,
                sop_instance_uid=uids.new("seg-viewer-sop", source_uid, frame),
                instance_number=instance,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=truncate_lo(algorithm.display_name),
                software_versions=software_versions(algorithm),
                device_serial_number=truncate_lo(algorithm.weights_id),
                content_description=truncate_lo(
                    f"Lesion mask{f' of source frame {frame}' if multiframe else ''}, {DISPLAY_GEOMETRY_NOTE}"
                ),
                content_label="LESION_VIEW",
                series_description=truncate_lo(series_description),
                plane_orientation=orientation,
                pixel_measures=pixel_measures,
                omit_empty_frames=False,  # an empty mask is an answer too ("no lesion here")
                **time_kwargs(when),
            )
        restore_source_sop_class(seg, source)  # references name the source's real (possibly retired) class
        _finish(seg, source, algorithm, uids, frame, when, calibrated)
        path = output_path(output_dir, "seg_viewer", seg.SOPInstanceUID)
        paths.append(write_dataset(seg, path))
        if slicer_files:
            paths.append(write_slicer_segmentation(mask, path.with_suffix(".seg.nrrd"), spacing))
    logger.info("wrote %d viewer SEG(s) (%s) to %s", len(preds), calibration, Path(output_dir))
    return paths


def _finish(
    seg: Dataset,
    source: Dataset,
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    frame: int,
    when: _dt.datetime,
    calibrated: bool,
) -> None:
    """The attributes highdicom has no parameter for (same choices as the source-faithful SEGs)."""
    if uids.deterministic:
        set_deterministic_dimension_uid(seg, uids.new("seg-viewer-dimension-organization", source.SOPInstanceUID, frame))
    stamp_creation_time(seg, when)
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = None  # Type 2 in DCMTK's (dcmqi's) Content Identification: no person to name
    comments = [
        f"Frame of Reference, orientation, position and spacing are {DISPLAY_GEOMETRY_NOTE}: origin 0, identity "
        + ("direction, pixel spacing of the calibrated ultrasound region" if calibrated else "direction, unit spacing (no calibrated region)")
    ]
    if algorithm.random_weights:
        comments.append(f"{RANDOM_WEIGHTS_WARNING} - not for clinical use")
    seg.ImageComments = _lt(". ".join(comments))


def _lt(text: str) -> str:
    return text[:10240]  # LT: 10240 characters
