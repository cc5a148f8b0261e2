"""The TID 1500 measurement report (Comprehensive 3D SR) of UltraAD's predictions: one TID 1410 group per source frame
that references the BINARY SEG frame, the predicted class, class probabilities, anomaly score and heatmap threshold."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom.uid
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.writers.codes import (
    LOCAL_CODING_SCHEME,
    PROBABILITY_CONCEPTS,
    QUALITATIVE_EVALUATIONS_TEXT,
    class_code,
    concept,
    lesion_category,
    lesion_type,
)
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
    no_patient_data_in_warnings,
    output_path,
    restore_source_sop_class,
    stamp_creation_time,
    time_kwargs,
    truncate_lo,
    write_dataset,
)
from monai_ultraad.dicom.writers.encoded_groups import EncodedGroups
from monai_ultraad.errors import InputDataError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Structured report
# ---------------------------------------------------------------------------------------------------------------------


def _seg_frame_by_source_frame(seg: Dataset, source: Dataset) -> dict[int, int]:
    """Map source frame number -> SEG frame number (segment 1) from the SEG's Derivation Image references."""
    mapping: dict[int, int] = {}
    for seg_frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        try:
            segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError):
            segment = int(
                seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber
            )
        if segment != SEGMENT_NUMBER:
            continue
        try:
            reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError):
            continue
        if reference.ReferencedSOPInstanceUID != source.SOPInstanceUID:
            continue
        source_frame = _source_frame_of(item, reference)
        mapping[source_frame] = seg_frame
    return mapping


def _source_frame_of(item: Dataset, reference: Dataset) -> int:
    """The source frame a SEG frame shows: its Referenced Frame Number, else (single-frame SOP class sources) the
    number in its Frame Label ("source frame N"), else 1."""
    if reference.get("ReferencedFrameNumber"):
        return int(reference.ReferencedFrameNumber)
    for content in item.get("FrameContentSequence", []):
        match = re.fullmatch(r"source frame (\d+)", str(content.get("FrameLabel", "")))
        if match:
            return int(match.group(1))
    return 1


def _measurement(code_value: str, value: float, unit: Any, algorithm_id: hd.sr.AlgorithmIdentification, **kw: Any):
    return hd.sr.Measurement(name=concept(code_value), value=float(value), unit=unit, algorithm_id=algorithm_id, **kw)


def _drop_segment_number_beside_frame(group: Dataset) -> None:
    """Remove Referenced Segment Number from the "Referenced Segmentation Frame" IMAGE item of a TID 1410 group.

    The SOP Instance Reference of an IMAGE content item may name a segment only when it does not name frames
    (PS3.3 Table 10-3: Referenced Segment Number "shall not be present" with Referenced Frame Number; dciodvfy
    reports it as an error). highdicom 0.28's ReferencedSegmentationFrame always writes both; a SEG frame holds one
    segment, so the frame reference alone is complete. highdicom has no option for this, hence the keyword edit.
    """
    for item in group[0].ContentSequence:
        if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == "121214":
            for reference in item.ReferencedSOPSequence:
                if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                    del reference.ReferencedSegmentNumber


def _random_weights_statement(text: str | None = None) -> hd.sr.TextContentItem:
    """TID 1410/1501 "Qualitative Evaluations" TEXT item carrying the random-weights warning.

    highdicom's QualitativeEvaluation is CODE-only; TID 1410 also allows a TEXT qualitative evaluation, which is
    the one place in a TID 1500 measurement group for a free-text statement, so it is appended as a typed
    TextContentItem. ``text`` replaces the warning for other statements of that kind (the input gate's verdict).
    """
    return hd.sr.TextContentItem(
        name=QUALITATIVE_EVALUATIONS_TEXT,
        value=text or f"{RANDOM_WEIGHTS_WARNING} - {NOT_FOR_CLINICAL_USE}",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def write_report(
    source: Dataset,
    binary_seg: Dataset,
    predictions: Sequence[PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int = 9003,
    pixel_spacing_mm: tuple[float, float] | None = None,
    input_quality: str | None = None,
    encode_groups: bool = True,
) -> Path:
    """Write a Comprehensive 3D SR (TID 1500 Measurement Report) of the predictions.

    The observer is the algorithm (device observer); the procedure reported is SNOMED CT 47079000 "Ultrasonography
    of breast". Each source frame gets a TID 1410 group that references its frame of ``binary_seg`` and holds: finding
    category/type (Morphologically abnormal structure / Neoplasm), finding site breast, the predicted class as a
    coded qualitative evaluation (SNOMED CT), numeric P(normal), P(benign), P(malignant) (UCUM ``{ratio}``), the
    anomaly score and the heatmap threshold (UCUM ``1``), each with the algorithm identification. With more than one
    frame a TID 1501 group adds the maximum anomaly score over frames. With random weights every group carries a TEXT
    "RANDOM WEIGHTS: ... not for clinical use" evaluation and the algorithm is named "<name> (RANDOM WEIGHTS)".

    Args:
        source: the source image.
        binary_seg: the BINARY SEG written by :func:`write_segmentations` (as read back, e.g. ``hd.seg.segread``).
        predictions: the predictions the SEG was made from.
        threshold: the heatmap threshold used for ``binary_seg``.
        output_dir: folder to write into.
        algorithm: identity of the algorithm.
        uids: UID (and time) source.
        series_number: series number of the SR.
        pixel_spacing_mm: (row, column) mm of the calibrated tissue region the model analysed; when given, every
            group also reports the lesion area (SCT 42798000 "Area", mm2: mask pixels times pixel area) - the SEGs
            themselves cannot carry a spacing (no Frame of Reference).
        input_quality: the input gate's one-line verdict (:meth:`monai_ultraad.quality.InputQuality.summary`),
            written into every group as a TEXT qualitative evaluation "Input quality: ...".
        encode_groups: encode each frame's group as it is built (:mod:`monai_ultraad.dicom.writers.encoded_groups`:
            a cine's report then holds 13 kB per frame, not 0.3 MB); ``False``: highdicom builds the report from the
            whole content tree (the same file).

    Returns:
        Path of ``sr_<SOPInstanceUID>.dcm`` inside ``output_dir``.
    """
    check_source(source)
    preds = checked_predictions(source, predictions)
    if binary_seg.get("SOPClassUID") != pydicom.uid.SegmentationStorage:
        raise InputDataError("binary_seg is not a Segmentation Storage object")
    if binary_seg.get("SegmentationType") != "BINARY":
        raise InputDataError(f"binary_seg must be a BINARY SEG, got {binary_seg.get('SegmentationType')}")
    if binary_seg.StudyInstanceUID != source.StudyInstanceUID:
        raise InputDataError("binary_seg belongs to another study than the source")
    seg_frames = _seg_frame_by_source_frame(binary_seg, source)
    missing = [int(p.frame_number) for p in preds if int(p.frame_number) not in seg_frames]
    if missing:
        raise InputDataError(f"binary_seg has no frame for source frame(s) {missing}")

    multiframe_source = frames_referenceable(source)
    algorithm_id = algorithm.sr_identification()
    no_units = codes.UCUM.NoUnits
    ratio = codes.UCUM.Ratio
    header = header_for_highdicom(source)
    groups = EncodedGroups(header, source, encode=encode_groups)
    for p in preds:
        frame = int(p.frame_number)
        predicted = max(CLASS_NAMES, key=lambda c: float(p.class_probs[c]))
        measurements = [
            _measurement(PROBABILITY_CONCEPTS[c], float(p.class_probs[c]), ratio, algorithm_id) for c in CLASS_NAMES
        ]
        measurements.append(_measurement("ANOMALY-SCORE", float(p.anomaly_score), no_units, algorithm_id))
        measurements.append(_measurement("HEATMAP-THRESH", float(threshold), no_units, algorithm_id))
        if pixel_spacing_mm is not None:
            lesion_pixels = int(np.count_nonzero(np.clip(np.asarray(p.heatmap, dtype=np.float32), 0, 1) >= threshold))
            area = lesion_pixels * float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
            measurements.append(
                hd.sr.Measurement(name=codes.SCT.Area, value=area, unit=codes.UCUM.SquareMillimeter, algorithm_id=algorithm_id)
            )
        # Built directly rather than with ReferencedSegmentationFrame.from_segmentation: highdicom 0.28 writes the
        # *SEG* frame number as the source image's Referenced Frame Number there, which is wrong whenever the two
        # differ (a subset of cine frames) and names a frame of a single-frame source.
        segment_reference = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=binary_seg.SOPClassUID,
            sop_instance_uid=binary_seg.SOPInstanceUID,
            frame_number=seg_frames[frame],
            segment_number=SEGMENT_NUMBER,
            source_image=hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=[frame] if multiframe_source else None,
            ),
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.new("roi-tracking", source.SOPInstanceUID, frame),
                identifier=f"UltraAD lesion heatmap, source frame {frame}",
            ),
            referenced_segment=segment_reference,
            finding_type=lesion_type(),
            finding_category=lesion_category(),
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Breast)],
            measurements=measurements,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=concept("PRED-CLASS"), value=class_code(predicted))
            ],
        )
        _drop_segment_number_beside_frame(group)
        if algorithm.random_weights:
            group[0].ContentSequence.append(_random_weights_statement())
        if input_quality:
            group[0].ContentSequence.append(_random_weights_statement(f"Input quality: {input_quality}"))
        groups.add(group)

    if len(preds) > 1:
        best = max(preds, key=lambda p: float(p.anomaly_score))
        summary = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.new("summary-tracking", source.SOPInstanceUID),
                identifier="UltraAD maximum over frames",
            ),
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Breast)],
            measurements=[
                _measurement(
                    "ANOMALY-SCORE", float(best.anomaly_score), no_units, algorithm_id, derivation=codes.SCT.Maximum
                )
            ],
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=source.SOPClassUID,
                    referenced_sop_instance_uid=source.SOPInstanceUID,
                    referenced_frame_numbers=[int(p.frame_number) for p in preds] if multiframe_source else None,
                )
            ],
        )
        if algorithm.random_weights:
            summary[0].ContentSequence.append(_random_weights_statement())
        groups.add(summary, keep=True)

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid(),
            name=truncate_lo(algorithm.display_name),
            manufacturer_name=MANUFACTURER,
            model_name=truncate_lo(f"{algorithm.name} {algorithm.version} ({algorithm.backbone})"),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=groups.for_highdicom,
    )
    when = uids.now()
    description = "UltraAD measurement report" + (" (RANDOM WEIGHTS)" if algorithm.random_weights else "")
    with no_patient_data_in_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[header, binary_seg],
            content=report,
            series_instance_uid=uids.new("sr-series", source.SOPInstanceUID),
            series_number=series_number,
            sop_instance_uid=uids.new("sr-sop", source.SOPInstanceUID),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,  # the algorithm reported all it computed ...
            is_final=False,  # ... but nobody verified it: a preliminary, unverified result
            is_verified=False,
            series_description=truncate_lo(description),
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=LOCAL_CODING_SCHEME,
                    name="UltraAD local concepts",
                    responsible_organization="monai_ultraad developers",
                )
            ],
            **time_kwargs(when),
        )
    restore_source_sop_class(sr, source)
    stamp_creation_time(sr, when)
    groups.splice(sr)  # last: every group, encoded
    path = output_path(output_dir, "sr", sr.SOPInstanceUID)
    write_dataset(sr, path)
    logger.info("wrote TID 1500 report with %d measurement group(s) to %s", groups.count, path)
    return path
