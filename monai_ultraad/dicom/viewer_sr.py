"""A TID 1500 SR that OHIF can open: the lesion outline as an image region, with the finding and the class.

The measurement report of :func:`monai_ultraad.dicom.writers.write_report` ties every TID 1410 group to a frame of
the BINARY SEG (a "Referenced Segmentation Frame"), which is the standard way for a segmentation-based finding. OHIF
3.13's SR viewport, however, hydrates only groups with a spatial coordinate (SCOORD) and fails on the others
("Cannot read properties of undefined (reading 'ReferencedSOPSequence')", the viewport stays black). This module
writes a second, small report for viewers beside it: per analysed frame with a lesion, one TID 1410 group whose ROI
is the outline of the lesion's largest connected part (its convex hull, a closed POLYLINE in the source image's pixel
coordinates; SCOORD needs no Frame of Reference), with the finding (Neoplasm), the predicted class (SNOMED CT), its
probability and the anomaly score. Frames without a lesion have no region to draw and no group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.dicom.source_header import iod_sop_class
from monai_ultraad.dicom.writers.codes import (
    LOCAL_CODING_SCHEME,
    PROBABILITY_CONCEPTS,
    class_code,
    concept,
    lesion_category,
    lesion_type,
)
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
    stamp_creation_time,
    time_kwargs,
    truncate_lo,
    write_dataset,
)
from monai_ultraad.dicom.writers.encoded_groups import EncodedGroups

__all__ = ["lesion_outline", "write_viewer_report"]

logger = logging.getLogger(__name__)


def lesion_outline(mask: np.ndarray) -> np.ndarray | None:
    """Closed (N, 2) polyline (column, row) around the largest connected part of ``mask``; ``None`` when empty.

    The convex hull of the pixel squares' corners: it encloses every pixel of that part.
    """
    labels, count = ndimage.label(np.asarray(mask) != 0)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    corners = np.concatenate([np.stack([cols + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    corners = np.unique(corners, axis=0).astype(np.float64)
    try:
        hull = corners[ConvexHull(corners).vertices]
    except QhullError:  # one row or column of pixels: its bounding box
        (c0, r0), (c1, r1) = corners.min(axis=0), corners.max(axis=0)
        hull = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1]], dtype=np.float64)
    return np.concatenate([hull, hull[:1]])  # closed: first point repeated


def write_viewer_report(
    source: Dataset,
    predictions: Sequence[PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int = 9006,
    encode_groups: bool = True,
) -> Path | None:
    """Write the viewer report (see the module docstring); ``None`` when no frame has a lesion to outline.

    ``encode_groups``: as :func:`monai_ultraad.dicom.writers.write_report` (each outlined frame's group is encoded as
    it is built; ``False``: highdicom builds the report from the whole tree, the same file).

    Returns:
        Path of ``sr_viewer_<SOPInstanceUID>.dcm`` inside ``output_dir``.
    """
    check_source(source)
    preds = checked_predictions(source, predictions)
    algorithm_id = algorithm.sr_identification()
    multiframe = is_multiframe(source)
    header = header_for_highdicom(source)
    groups = EncodedGroups(header, source, encode=encode_groups)
    for p in preds:
        frame = int(p.frame_number)
        mask = np.clip(np.asarray(p.heatmap, dtype=np.float32), 0, 1) >= float(threshold)
        outline = lesion_outline(mask)
        if outline is None:
            continue
        predicted = max(CLASS_NAMES, key=lambda c: float(p.class_probs[c]))
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion(
                # highdicom looks the class up in its IOD tables (current classes only); the source's real class is
                # put back by restore_source_sop_class below
                referenced_sop_class_uid=iod_sop_class(source.SOPClassUID),
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=[frame] if multiframe and frames_referenceable(source) else None,
            ),
        )
        measurements = [
            hd.sr.Measurement(name=concept(PROBABILITY_CONCEPTS[predicted]), value=float(p.class_probs[predicted]),
                              unit=codes.UCUM.Ratio, algorithm_id=algorithm_id),
            hd.sr.Measurement(name=concept("ANOMALY-SCORE"), value=float(p.anomaly_score), unit=codes.UCUM.NoUnits,
                              algorithm_id=algorithm_id),
        ]
        groups.add(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.new("viewer-roi-tracking", source.SOPInstanceUID, frame),
                identifier=truncate_lo(f"UltraAD lesion ({predicted}), frame {frame}"),
            ),
            referenced_region=region,
            finding_type=lesion_type(),
            finding_category=lesion_category(),
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Breast)],
            measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=concept("PRED-CLASS"), value=class_code(predicted))],
        ))
    if not groups.count:
        logger.info("no lesion in any analysed frame: no viewer report")
        return None
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid(), name=truncate_lo(algorithm.display_name), manufacturer_name=MANUFACTURER,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=groups.for_highdicom,
    )
    when = uids.now()
    description = "UltraAD lesion outline" + (" (RANDOM WEIGHTS)" if algorithm.random_weights else "") + ", for viewers"
    with no_patient_data_in_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[header],
            content=report,
            series_instance_uid=uids.new("sr-viewer-series", source.SOPInstanceUID),
            series_number=series_number,
            sop_instance_uid=uids.new("sr-viewer-sop", source.SOPInstanceUID),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=truncate_lo(description),
            coding_schemes=[CodingSchemeIdentificationItem(
                designator=LOCAL_CODING_SCHEME, name="UltraAD local concepts",
                responsible_organization="monai_ultraad developers",
            )],
            **time_kwargs(when),
        )
    restore_source_sop_class(sr, source)  # the evidence names the source's real (possibly retired) class
    stamp_creation_time(sr, when)
    groups.splice(sr)  # last: every group, encoded
    path = output_path(output_dir, "sr_viewer", sr.SOPInstanceUID)
    write_dataset(sr, path)
    logger.info("wrote viewer report with %d outlined lesion(s) to %s", groups.count, path)
    return path
