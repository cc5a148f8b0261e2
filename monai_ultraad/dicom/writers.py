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

Ultrasound without a Frame of Reference
---------------------------------------
Ultrasound images have no Frame of Reference and no plane position/orientation, so a SEG of them can only be tied to
its source pixel-for-pixel through the frame references of the Derivation Image Sequence (PS3.3 A.51.5.1).
highdicom 0.28 supports that for a *single* source frame only: for an Ultrasound Multi-frame source it raises
``ValueError: Only a single frame is supported when the source image has no Frame of Reference UID.`` (and with a
one-frame multi-frame source it fails looking for the Shared Functional Groups Sequence that only enhanced
multi-frame objects have). For multi-frame sources this module therefore subclasses
:class:`highdicom.seg.Segmentation` and replaces exactly one step, the spatial preparation, so that every SEG frame
references its own source frame (``ReferencedFrameNumber``); everything else (segment description, pixel encoding,
functional groups, references) is still highdicom's. Because the frames then differ in nothing highdicom indexes, a
second dimension, Frame Label (Frame Content Sequence), is added so that every frame has a unique Dimension Index
Values pair (segment, source frame).

dcmqi (and so 3D Slicer's DICOM SEG import) cannot convert such SEGs: it builds an ITK volume and needs patient
geometry (``Plane Orientation (Patient) is missing, cannot parse input`` / ``ERROR: Failed to get image
directions!``). Inventing a Frame of Reference and positions here would make the source-faithful SEG claim a patient
coordinate system the source does not have, so this module does not; and because PS3.3 Table A.51-2 allows Pixel
Measures only with a Frame of Reference (highdicom's ``segread`` refuses them otherwise), these SEGs carry none. The
region's physical spacing goes into the SR (lesion area) and into the *viewer SEG* of
:mod:`monai_ultraad.dicom.viewer_seg`, which places the mask in the display geometry Slicer and OHIF use.

Nothing here logs patient or study attributes; only generated UIDs appear in file names and log lines.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import highdicom as hd
import numpy as np
import pydicom.uid
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from monai_ultraad import __version__ as _PACKAGE_VERSION
from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.source_header import conformant_header, iod_sop_class, is_multiframe_sop_class
from monai_ultraad.errors import InputDataError
from monai_ultraad.io_utils import atomic_write_bytes

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

logger = logging.getLogger(__name__)

#: Manufacturer (developer) of the software that creates the objects (General Equipment module).
MANUFACTURER = "monai_ultraad"

#: Private coding scheme for the concepts no standard code names (PS3.3 8.2: designators beginning with "99").
LOCAL_CODING_SCHEME = "99ULTRAAD"

#: Written into every overlay (and its series description) - it is a rendering, not an image to diagnose from.
NOT_FOR_DIAGNOSIS_NOTE = "Derived heatmap overlay - not for primary diagnosis"

_NOT_FOR_CLINICAL_USE = "not for clinical use"

#: Deterministic mode needs a fixed clock too: highdicom stamps Instance Creation / Content Date and Time otherwise.
_FIXED_TIMESTAMP = _dt.datetime(2000, 1, 1, 0, 0, 0)

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SEGMENT_NUMBER = 1
_LO_MAX = 64  # characters of a DICOM LO (Long String) value
_HEATMAP_TOLERANCE = 1e-3

# ---------------------------------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------------------------------

#: Predicted image class -> coded value. Normal: SNOMED CT 17621005 "Normal" (qualifier value, pydicom's dictionary).
#: Benign: SNOMED CT 3898006 "Neoplasm, benign" (morphologic abnormality). Malignant: SNOMED CT 363346000
#: "Malignant neoplastic disease" (disorder). The last two are not in pydicom's DICOM code dictionary (they are in no
#: CID it ships), so they are written as CodedConcepts with their SNOMED CT preferred terms.
_CLASS_CODES: dict[str, hd.sr.CodedConcept] = {
    "normal": hd.sr.CodedConcept.from_code(codes.SCT.Normal),
    "benign": hd.sr.CodedConcept(value="3898006", scheme_designator="SCT", meaning="Neoplasm, benign"),
    "malignant": hd.sr.CodedConcept(value="363346000", scheme_designator="SCT", meaning="Malignant neoplastic disease"),
}

#: Concepts UltraAD reports that no standard code names (an AI's class probabilities, its anomaly score, its heatmap
#: threshold). CID 7469 (measurement names) and CID 7181 (units) are extensible, so private codes are allowed; the
#: scheme is declared in the SR's Coding Scheme Identification Sequence.
_LOCAL_CONCEPTS: dict[str, str] = {
    "P-NORMAL": "Probability of normal image class",
    "P-BENIGN": "Probability of benign image class",
    "P-MALIGNANT": "Probability of malignant image class",
    "ANOMALY-SCORE": "Anomaly score",
    "HEATMAP-THRESH": "Lesion heatmap threshold",
    "PRED-CLASS": "Predicted image class",
}

#: Each class probability's concept code.
_PROBABILITY_CONCEPTS = {"normal": "P-NORMAL", "benign": "P-BENIGN", "malignant": "P-MALIGNANT"}

#: TID 1410 row "Qualitative Evaluations" (value type TEXT) - where free text may stand in a TID 1500 group.
_QUALITATIVE_EVALUATIONS_TEXT = hd.sr.CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)


#: Concepts of :data:`_LOCAL_CONCEPTS` that a standard code names exactly; these are written instead of the private
#: code. DCM 111047 "Probability of cancer" is CID 6048's CAD output probability; DCM 122411 "Threshold Value".
#: P(normal), P(benign), the anomaly score and the predicted-class evaluation have no standard code: they stay in the
#: private scheme, declared in the SR's Coding Scheme Identification Sequence (dciodvfy does not read that sequence
#: and warns "Unrecognized defined term <99ULTRAAD>" on each of them; README lists this).
_STANDARD_CONCEPTS: dict[str, hd.sr.CodedConcept] = {
    "P-MALIGNANT": hd.sr.CodedConcept(value="111047", scheme_designator="DCM", meaning="Probability of cancer"),
    "HEATMAP-THRESH": hd.sr.CodedConcept(value="122411", scheme_designator="DCM", meaning="Threshold Value"),
}


def concept(code_value: str) -> hd.sr.CodedConcept:
    """The concept UltraAD names ``code_value`` (one of ``P-NORMAL``, ``ANOMALY-SCORE``, ... in this module): the
    standard code where one exists (:data:`_STANDARD_CONCEPTS`), else the private-scheme code."""
    if code_value in _STANDARD_CONCEPTS:
        return _STANDARD_CONCEPTS[code_value]
    try:
        meaning = _LOCAL_CONCEPTS[code_value]
    except KeyError:
        raise KeyError(f"unknown UltraAD concept {code_value!r}; known: {sorted(_LOCAL_CONCEPTS)}") from None
    return hd.sr.CodedConcept(value=code_value, scheme_designator=LOCAL_CODING_SCHEME, meaning=meaning)


def class_code(class_name: str) -> hd.sr.CodedConcept:
    """Coded value (SNOMED CT) of a predicted image class from :data:`~monai_ultraad.constants.CLASS_NAMES`."""
    try:
        return _CLASS_CODES[class_name]
    except KeyError:
        raise InputDataError(f"unknown image class {class_name!r}; expected one of {CLASS_NAMES}") from None


def _lesion_category() -> hd.sr.CodedConcept:
    # SCT 49755003: "Morphologically Altered Structure" in current CID 7150 - pydicom still carries the former
    # SNOMED CT term "Morphologically Abnormal Structure" for the same code.
    return hd.sr.CodedConcept.from_code(codes.SCT.MorphologicallyAbnormalStructure)


def _lesion_type() -> hd.sr.CodedConcept:
    # SCT 108369006 "Neoplasm" (CID 7151 / 7159): the "Neoplasm / Mass" of the segment.
    return hd.sr.CodedConcept.from_code(codes.SCT.Neoplasm)


# ---------------------------------------------------------------------------------------------------------------------
# Public value types
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AlgorithmInfo:
    """Identity of the algorithm that produced the outputs, written into every object.

    Attributes:
        name: algorithm name (``UltraAD``); written as ``"<name> (RANDOM WEIGHTS)"`` when ``random_weights``.
        version: algorithm / model version.
        family: algorithm family, a code meaning from DICOM CID 7162 (e.g. ``"Artificial Intelligence"``).
        backbone: CLIP backbone name.
        weights_id: identifier of the pretrained weights (e.g. an open_clip pretrained tag).
        checkpoint_sha256: SHA-256 of the UltraAD checkpoint file.
        random_weights: the backbone was randomly initialised: every object then carries
            :data:`~monai_ultraad.constants.RANDOM_WEIGHTS_WARNING`.
    """

    name: str = "UltraAD"
    version: str
    family: str = "Artificial Intelligence"
    backbone: str
    weights_id: str
    checkpoint_sha256: str
    random_weights: bool

    @property
    def display_name(self) -> str:
        """Algorithm name as written into DICOM: flagged when the weights are random."""
        return f"{self.name} (RANDOM WEIGHTS)" if self.random_weights else self.name

    def family_code(self) -> hd.sr.CodedConcept:
        """The CID 7162 code whose meaning is :attr:`family` (case and spaces ignored)."""
        wanted = re.sub(r"[^a-z0-9]", "", self.family.lower())
        cid = codes.cid7162
        for keyword in cid.concepts:
            code = getattr(cid, keyword)
            if re.sub(r"[^a-z0-9]", "", code.meaning.lower()) == wanted:
                return hd.sr.CodedConcept.from_code(code)
        meanings = sorted(getattr(cid, k).meaning for k in cid.concepts)
        raise ValueError(f"algorithm family {self.family!r} is not in DICOM CID 7162 ({meanings})")

    def parameters(self) -> dict[str, str]:
        """Algorithm parameters recorded with the identification (backbone, weights, checkpoint hash, random flag)."""
        return {
            "backbone": self.backbone,
            "weights_id": self.weights_id,
            "checkpoint_sha256": self.checkpoint_sha256,
            "random_weights": "true" if self.random_weights else "false",
        }

    def segmentation_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Segment Algorithm Identification (SEG) with the parameters as ``key=value`` Algorithm Parameters."""
        return hd.AlgorithmIdentificationSequence(
            name=_lo(self.display_name),
            family=self.family_code(),
            version=_lo(self.version),
            source=MANUFACTURER,
            parameters=self.parameters(),
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification (SR) with the parameters as ``key=value`` TEXT items."""
        return hd.sr.AlgorithmIdentification(
            name=self.display_name,
            version=self.version,
            parameters=[f"{k}={v}" for k, v in self.parameters().items()],
            family=self.family_code(),
            manufacturer=MANUFACTURER,
        )

    def device_uid(self) -> str:
        """Device Observer UID: the same for the same algorithm, version and weights, whatever the UIDFactory."""
        return generate_uid(
            entropy_srcs=[
                "ultraad-device",
                self.name,
                self.version,
                self.backbone,
                self.weights_id,
                self.checkpoint_sha256,
            ]
        )


class UIDFactory:
    """Source of new UIDs (and of the creation time stamped into objects).

    Args:
        seed: ``None`` for random UIDs (:class:`highdicom.UID`) and the current time - what production uses. A string
            makes every UID a hash of ``(seed, kind, *parts)`` and the time :attr:`timestamp` fixed, so that the same
            inputs give byte-identical files (tests, reproducible pipelines).
        timestamp: creation time to stamp in deterministic mode (default 2000-01-01 00:00:00).
    """

    def __init__(self, seed: str | None = None, timestamp: _dt.datetime | None = None) -> None:
        self.seed = seed
        self._timestamp = timestamp if timestamp is not None else _FIXED_TIMESTAMP

    @property
    def deterministic(self) -> bool:
        """Whether UIDs and times are reproducible."""
        return self.seed is not None

    def new(self, kind: str, *parts: object) -> str:
        """A new UID for an object of ``kind`` (``"series"``, ``"sop"``, ...) identified further by ``parts``."""
        if self.seed is None:
            return str(hd.UID())
        return str(generate_uid(entropy_srcs=[self.seed, kind, *(str(p) for p in parts)]))

    def now(self) -> _dt.datetime:
        """Creation time to record: the fixed timestamp in deterministic mode, else the current local time."""
        return self._timestamp if self.seed is not None else _dt.datetime.now()


@dataclass
class FramePrediction:
    """UltraAD's output for one source frame, in the full source frame geometry.

    Attributes:
        frame_number: 1-based number of the source frame (1 for a single-frame image).
        heatmap: (rows, cols) lesion probability in [0, 1], same size as the source frame.
        class_probs: probability of each class of :data:`~monai_ultraad.constants.CLASS_NAMES`.
        anomaly_score: image-level anomaly score of the frame.
    """

    frame_number: int
    heatmap: np.ndarray
    class_probs: dict[str, float]
    anomaly_score: float


class _PredictionLike(Protocol):
    """Anything with FramePrediction's fields (e.g. :class:`monai_ultraad.inference.Prediction`)."""

    frame_number: int
    heatmap: np.ndarray
    class_probs: Mapping[str, float]
    anomaly_score: float


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_patient_data_in_warnings() -> Iterator[None]:
    """Silence highdicom's person-name checks: their warnings quote the (patient's) name, which must not reach logs.

    The names are still copied into the objects unchanged; only the warning text is suppressed.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*person name.*", category=UserWarning)
        yield


def _lo(text: str) -> str:
    """``text`` cut to the 64 characters a DICOM LO value may hold."""
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def _software_versions(algorithm: AlgorithmInfo) -> list[str]:
    # A list, not a tuple: pydicom accepts only lists for multi-valued elements (highdicom passes the value through).
    return [_lo(f"monai_ultraad {_PACKAGE_VERSION}"), _lo(f"{algorithm.name} {algorithm.version}")]


def _number_of_frames(source: Dataset) -> int:
    return int(source.get("NumberOfFrames", 1) or 1)


def _frames_referenceable(source: Dataset) -> bool:
    """Whether references to ``source`` may name its frames: only for multi-frame SOP classes (PS3.3 10.3). A
    single-frame SOP class object that nevertheless holds several frames (e.g. 2-frame Ultrasound Image Storage
    files) is referenced as a whole; which of its frames a SEG frame shows is then said by its Frame Label."""
    return is_multiframe_sop_class(source.SOPClassUID)


def _is_multiframe(source: Dataset) -> bool:
    """A multi-frame object: it holds more than one frame or its SOP class is a multi-frame one (e.g. Ultrasound
    Multi-frame Image Storage with a single frame). References to frames of such objects carry frame numbers."""
    sop_class_name = pydicom.uid.UID(str(source.SOPClassUID)).name.lower()
    return _number_of_frames(source) > 1 or "multi-frame" in sop_class_name or "enhanced" in sop_class_name


def _check_source(source: Dataset) -> None:
    missing = [
        kw
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
        if kw not in source
    ]
    if missing:
        raise InputDataError(f"source dataset lacks {', '.join(missing)}; it is not an image object")


def _checked_predictions(source: Dataset, predictions: Sequence[_PredictionLike]) -> list[_PredictionLike]:
    """Predictions sorted by frame number, after checking numbers, heatmap shapes/ranges and class probabilities."""
    if len(predictions) == 0:
        raise InputDataError("no predictions given")
    n_frames = _number_of_frames(source)
    shape = (int(source.Rows), int(source.Columns))
    seen: set[int] = set()
    for p in predictions:
        f = int(p.frame_number)
        if not 1 <= f <= n_frames:
            raise InputDataError(f"prediction frame number {f} is outside the source's frames 1..{n_frames}")
        if f in seen:
            raise InputDataError(f"two predictions for source frame {f}")
        seen.add(f)
        heat = np.asarray(p.heatmap)
        if heat.shape != shape:
            raise InputDataError(f"heatmap of frame {f} has shape {heat.shape}, the source frame is {shape}")
        # Interpolated heatmaps may overshoot [0, 1] by rounding noise (clipped later); more is a caller's bug.
        tol = _HEATMAP_TOLERANCE
        if not np.all(np.isfinite(heat)) or heat.min() < -tol or heat.max() > 1.0 + tol:
            raise InputDataError(f"heatmap of frame {f} must hold finite values in [0, 1]")
        missing = [c for c in CLASS_NAMES if c not in p.class_probs]
        if missing:
            raise InputDataError(f"class probabilities of frame {f} lack {missing}")
        if not np.isfinite(float(p.anomaly_score)):
            raise InputDataError(f"anomaly score of frame {f} is not finite")
    return sorted(predictions, key=lambda p: int(p.frame_number))


def _header_only(source: Dataset) -> Dataset:
    """A header-only copy of ``source`` with conformant values (see :mod:`monai_ultraad.dicom.source_header`)."""
    return conformant_header(source, warn_label="source image")


def _for_highdicom(source: Dataset) -> Dataset:
    """The header highdicom builds from: conformant, and with a retired SOP class looked up as the current one of the
    same IOD (highdicom's module tables know only current classes); :func:`_restore_source_sop_class` puts the
    source's real class back into the references afterwards."""
    header = _header_only(source)
    header.SOPClassUID = iod_sop_class(source.SOPClassUID)
    return header


def _restore_source_sop_class(dataset: Dataset, source: Dataset) -> None:
    """Every reference to ``source`` names its real SOP Class UID (see :func:`_for_highdicom`)."""
    real = str(source.SOPClassUID)
    if iod_sop_class(real) == real:
        return

    def walk(ds: Dataset) -> None:
        if ds.get("ReferencedSOPInstanceUID") == source.SOPInstanceUID and "ReferencedSOPClassUID" in ds:
            ds.ReferencedSOPClassUID = real
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)

    walk(dataset)


def _output_path(output_dir: str | os.PathLike[str], prefix: str, uid: str) -> Path:
    """``output_dir/<prefix>_<uid>.dcm``, refusing anything that would not be a plain file inside ``output_dir``.

    File names are built only from generated UIDs (digits and dots), never from values read from the source, so a
    crafted DICOM value cannot steer a write outside ``output_dir``.
    """
    if not _UID_PATTERN.fullmatch(uid) or len(uid) > 64:
        raise ValueError(f"not a DICOM UID: {uid!r}")
    root = Path(output_dir).resolve()
    path = (root / f"{prefix}_{uid}.dcm").resolve()
    if path.parent != root:
        raise ValueError(f"output path {path} escapes {root}")
    return path


def _write(dataset: Dataset, path: Path) -> Path:
    """Serialise ``dataset`` as a DICOM Part 10 file and write it atomically."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(path, buffer.getbuffer())  # a view, not a second copy of the encoded object


def _stamp_creation_time(dataset: Dataset, when: _dt.datetime) -> None:
    """Stamp ``when`` wherever highdicom stamped ``now`` itself (it has no parameter for these), for reproducibility.

    Instance Creation Date/Time (SOP Common) and the Contribution DateTime of highdicom's own Contributing Equipment
    item (model name "highdicom"); equipment copied from the source keeps its times.
    """
    dataset.InstanceCreationDate = when.strftime("%Y%m%d")
    dataset.InstanceCreationTime = when.strftime("%H%M%S")
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")


def _time_kwargs(when: _dt.datetime) -> dict[str, Any]:
    """Content and series date/time arguments for highdicom's SOPClass (one creation time for the whole object)."""
    return {
        "content_date": when.date(),
        "content_time": when.time().replace(microsecond=0),
        "series_date": when.date(),
        "series_time": when.time().replace(microsecond=0),
    }


def ultrasound_pixel_spacing_mm(source: Dataset) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm from Pixel Spacing or the Sequence of Ultrasound Regions, else ``None``.

    Regions count when they are 2D (Region Spatial Format 1) and calibrated in cm (Physical Units 3) in both
    directions; a spacing is returned only when all such regions agree (within 0.1 %), because Pixel Measures apply to
    the whole frame.
    """
    if "PixelSpacing" in source and len(source.PixelSpacing) == 2:
        row, col = (float(v) for v in source.PixelSpacing)
        if row > 0 and col > 0:
            return row, col
    spacings = []
    for region in source.get("SequenceOfUltrasoundRegions", []):
        if region.get("RegionSpatialFormat") != 1:
            continue
        if region.get("PhysicalUnitsXDirection") != 3 or region.get("PhysicalUnitsYDirection") != 3:
            continue
        dx, dy = float(region.get("PhysicalDeltaX", 0) or 0), float(region.get("PhysicalDeltaY", 0) or 0)
        if dx > 0 and dy > 0:
            spacings.append((abs(dy) * 10.0, abs(dx) * 10.0))  # cm -> mm; Pixel Spacing is (row, column)
    if not spacings:
        return None
    first = np.array(spacings[0])
    if all(np.allclose(np.array(s), first, rtol=1e-3) for s in spacings[1:]):
        return float(first[0]), float(first[1])
    return None


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


def _check_highdicom_hooks() -> None:
    """Fail clearly if highdicom no longer has the private steps _SourceFrameSegmentation relies on."""
    needed = ("_prepare_spatial_metadata", "_get_derivation_source_image_item", "_init_multiframe_image")
    missing = [name for name in needed if not hasattr(hd.seg.Segmentation, name)]
    if missing:
        raise RuntimeError(
            f"highdicom {hd.__version__} lacks {missing}: SEGs of multi-frame sources without Frame of Reference were "
            "written with highdicom 0.28; check monai_ultraad.dicom.writers._SourceFrameSegmentation against it"
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
        content.DimensionIndexValues = [_SEGMENT_NUMBER, position]
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


def _set_deterministic_dimension_uid(seg: Dataset, uid: str) -> None:
    """Replace the Dimension Organization UID highdicom draws at random (reproducible files need every UID fixed)."""
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = uid


def _segment_description(algorithm: AlgorithmInfo, tracking_uid: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=_SEGMENT_NUMBER,
        segment_label="Lesion",
        segmented_property_category=_lesion_category(),
        segmented_property_type=_lesion_type(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.segmentation_identification(),
        tracking_uid=tracking_uid,
        tracking_id="UltraAD lesion",
    )


def _build_segmentation(
    source: Dataset,
    frame_numbers: list[int],
    pixel_array: np.ndarray,
    segmentation_type: hd.seg.SegmentationTypeValues,
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int,
    when: _dt.datetime,
    tracking_uid: str,
) -> hd.seg.Segmentation:
    kind = segmentation_type.value.lower()
    source_uid = source.SOPInstanceUID
    series_uid = uids.new(f"seg-{kind}-series", source_uid)
    sop_uid = uids.new(f"seg-{kind}-sop", source_uid)
    description = "UltraAD lesion probability" if kind == "fractional" else "UltraAD lesion mask"
    if algorithm.random_weights:
        description += " (RANDOM WEIGHTS)"
    arguments: dict[str, Any] = dict(
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=[_segment_description(algorithm, tracking_uid)],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_lo(algorithm.display_name),
        software_versions=_software_versions(algorithm),
        device_serial_number=_lo(algorithm.weights_id),
        content_description=_lo(description),
        content_label="LESION" if kind == "binary" else "LESION_PROB",
        series_description=_lo(description),
        # No pixel_measures: without a Frame of Reference the Pixel Measures macro is not allowed (module docstring);
        # a source with one has its own, which highdicom copies.
        # The binary SEG keeps a frame for every predicted source frame so that SR groups and frames line up; the
        # fractional one may drop all-zero frames (a reader gets zeros for them either way).
        omit_empty_frames=segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL,
        **_time_kwargs(when),
    )
    if segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        arguments["fractional_type"] = hd.seg.SegmentationFractionalTypeValues.PROBABILITY
        arguments["max_fractional_value"] = 255

    if _is_multiframe(source) and hd.spatial.get_image_coordinate_system(source) is None:
        _check_highdicom_hooks()
        header = _for_highdicom(source)
        header.NumberOfFrames = 1  # see _SourceFrameSegmentation: passes highdicom's single-frame check
        with _no_patient_data_in_warnings():
            seg: hd.seg.Segmentation = _SourceFrameSegmentation(
                source_frame_numbers=frame_numbers, source_images=[header], **arguments
            )
        _add_source_frame_dimension(seg, uids)
        if not _frames_referenceable(source):
            _drop_frame_numbers_of_single_frame_class(seg)
    else:
        if _is_multiframe(source) and frame_numbers != list(range(1, _number_of_frames(source) + 1)):
            # highdicom copies one plane position per source frame; it cannot skip frames of a source with geometry.
            raise InputDataError("a multi-frame source with a Frame of Reference needs a prediction for every frame")
        with _no_patient_data_in_warnings():
            seg = hd.seg.Segmentation(source_images=[_for_highdicom(source)], **arguments)
    _restore_source_sop_class(seg, source)

    if uids.deterministic:
        _set_deterministic_dimension_uid(seg, uids.new(f"seg-{kind}-dimension-organization", source_uid))
    _stamp_creation_time(seg, when)
    # General Image: Patient Orientation is Type 2C, required without Image Orientation (Patient) - as here. highdicom
    # sets it only for images with geometry, so it is copied from the source (usually empty for ultrasound).
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", None)
    # Content Creator's Name is Type 2 in DCMTK's (dcmqi's) Content Identification Macro; an automatic segmentation
    # has no person to name, so it is present and empty.
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = None
    if algorithm.random_weights:
        seg.ImageComments = f"{RANDOM_WEIGHTS_WARNING} - {_NOT_FOR_CLINICAL_USE}"
    return seg


def write_segmentations(
    source: Dataset,
    predictions: Sequence[_PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number_start: int = 9001,
) -> tuple[Path, Path]:
    """Write the lesion heatmap as a FRACTIONAL SEG and ``heatmap >= threshold`` as a BINARY SEG.

    Args:
        source: the full source image (single- or multi-frame ultrasound); only its metadata is used.
        predictions: one prediction per analysed source frame (any subset of the frames), heatmaps in the full frame
            geometry.
        threshold: heatmap value from which a pixel belongs to the lesion mask.
        output_dir: folder to write into (created when missing).
        algorithm: identity of the algorithm, recorded in the segment description.
        uids: UID (and time) source.
        series_number_start: series number of the FRACTIONAL SEG; the BINARY SEG gets the next one.

    Returns:
        ``(fractional_path, binary_path)``, named ``seg_fractional_<SOPInstanceUID>.dcm`` and
        ``seg_binary_<SOPInstanceUID>.dcm`` inside ``output_dir``.

    Raises:
        InputDataError: predictions that do not fit the source (frame numbers, heatmap shapes or values).
    """
    _check_source(source)
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputDataError(f"threshold must lie in [0, 1], got {threshold}")
    preds = _checked_predictions(source, predictions)
    frame_numbers = [int(p.frame_number) for p in preds]
    heat = np.stack([np.asarray(p.heatmap, dtype=np.float32) for p in preds])
    np.clip(heat, 0.0, 1.0, out=heat)  # in place: a cine's heatmaps are the largest array here
    mask = (heat >= float(threshold)).astype(np.uint8)
    when = uids.now()
    tracking_uid = uids.new("lesion-tracking", source.SOPInstanceUID)
    paths = []
    for offset, (kind, array) in enumerate(
        ((hd.seg.SegmentationTypeValues.FRACTIONAL, heat), (hd.seg.SegmentationTypeValues.BINARY, mask))
    ):
        seg = _build_segmentation(
            source,
            frame_numbers,
            array,
            kind,
            algorithm,
            uids,
            series_number_start + offset,
            when,
            tracking_uid,
        )
        path = _output_path(output_dir, f"seg_{kind.value.lower()}", seg.SOPInstanceUID)
        paths.append(_write(seg, path))
        logger.info("wrote %s SEG with %d frame(s) to %s", kind.value, int(seg.NumberOfFrames), path)
    return paths[0], paths[1]


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
        if segment != _SEGMENT_NUMBER:
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
        name=_QUALITATIVE_EVALUATIONS_TEXT,
        value=text or f"{RANDOM_WEIGHTS_WARNING} - {_NOT_FOR_CLINICAL_USE}",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def write_report(
    source: Dataset,
    binary_seg: Dataset,
    predictions: Sequence[_PredictionLike],
    threshold: float,
    output_dir: str | os.PathLike[str],
    algorithm: AlgorithmInfo,
    uids: UIDFactory,
    series_number: int = 9003,
    pixel_spacing_mm: tuple[float, float] | None = None,
    input_quality: str | None = None,
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

    Returns:
        Path of ``sr_<SOPInstanceUID>.dcm`` inside ``output_dir``.
    """
    _check_source(source)
    preds = _checked_predictions(source, predictions)
    if binary_seg.get("SOPClassUID") != _SEGMENTATION_STORAGE:
        raise InputDataError("binary_seg is not a Segmentation Storage object")
    if binary_seg.get("SegmentationType") != "BINARY":
        raise InputDataError(f"binary_seg must be a BINARY SEG, got {binary_seg.get('SegmentationType')}")
    if binary_seg.StudyInstanceUID != source.StudyInstanceUID:
        raise InputDataError("binary_seg belongs to another study than the source")
    seg_frames = _seg_frame_by_source_frame(binary_seg, source)
    missing = [int(p.frame_number) for p in preds if int(p.frame_number) not in seg_frames]
    if missing:
        raise InputDataError(f"binary_seg has no frame for source frame(s) {missing}")

    multiframe_source = _frames_referenceable(source)
    algorithm_id = algorithm.sr_identification()
    no_units = codes.UCUM.NoUnits
    ratio = codes.UCUM.Ratio
    groups: list[Any] = []
    for p in preds:
        frame = int(p.frame_number)
        predicted = max(CLASS_NAMES, key=lambda c: float(p.class_probs[c]))
        measurements = [
            _measurement(_PROBABILITY_CONCEPTS[c], float(p.class_probs[c]), ratio, algorithm_id) for c in CLASS_NAMES
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
            segment_number=_SEGMENT_NUMBER,
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
            finding_type=_lesion_type(),
            finding_category=_lesion_category(),
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
        groups.append(group)

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
        groups.append(summary)

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid(),
            name=_lo(algorithm.display_name),
            manufacturer_name=MANUFACTURER,
            model_name=_lo(f"{algorithm.name} {algorithm.version} ({algorithm.backbone})"),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=groups,
    )
    when = uids.now()
    description = "UltraAD measurement report" + (" (RANDOM WEIGHTS)" if algorithm.random_weights else "")
    with _no_patient_data_in_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[_for_highdicom(source), binary_seg],
            content=report,
            series_instance_uid=uids.new("sr-series", source.SOPInstanceUID),
            series_number=series_number,
            sop_instance_uid=uids.new("sr-sop", source.SOPInstanceUID),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,  # the algorithm reported all it computed ...
            is_final=False,  # ... but nobody verified it: a preliminary, unverified result
            is_verified=False,
            series_description=_lo(description),
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=LOCAL_CODING_SCHEME,
                    name="UltraAD local concepts",
                    responsible_organization="monai_ultraad developers",
                )
            ],
            **_time_kwargs(when),
        )
    _restore_source_sop_class(sr, source)
    _stamp_creation_time(sr, when)
    path = _output_path(output_dir, "sr", sr.SOPInstanceUID)
    _write(sr, path)
    logger.info("wrote TID 1500 report with %d measurement group(s) to %s", len(groups), path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Overlay
# ---------------------------------------------------------------------------------------------------------------------


def write_overlay(
    source: Dataset,
    overlay_rgb_frames: np.ndarray,
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
        overlay_rgb_frames: (F, rows, cols, 3) uint8 RGB frames (a (rows, cols, 3) array is taken as one frame).
        output_dir: folder to write into.
        algorithm: identity of the algorithm.
        uids: UID (and time) source.
        series_number: series number of the overlay.
        frame_numbers: source frame of each overlay frame (default 1..F).

    Returns:
        Path of ``overlay_<SOPInstanceUID>.dcm`` inside ``output_dir``.
    """
    _check_source(source)
    frames = np.asarray(overlay_rgb_frames)
    if frames.ndim == 3:
        frames = frames[np.newaxis]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputDataError(f"overlay frames must be (F, rows, cols, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise InputDataError(f"overlay frames must be uint8, got {frames.dtype}")
    n = frames.shape[0]
    numbers = [int(f) for f in (frame_numbers if frame_numbers is not None else range(1, n + 1))]
    if len(numbers) != n:
        raise InputDataError(f"{len(numbers)} frame numbers for {n} overlay frames")
    n_source = _number_of_frames(source)
    if any(not 1 <= f <= n_source for f in numbers):
        raise InputDataError(f"overlay frame numbers {numbers} are outside the source's frames 1..{n_source}")

    when = uids.now()
    comment = NOT_FOR_DIAGNOSIS_NOTE
    if algorithm.random_weights:
        comment += f". {RANDOM_WEIGHTS_WARNING} - {_NOT_FOR_CLINICAL_USE}"
    series_description = (
        "UltraAD overlay, RANDOM WEIGHTS, not for diagnosis"
        if algorithm.random_weights
        else (f"UltraAD {NOT_FOR_DIAGNOSIS_NOTE[0].lower()}{NOT_FOR_DIAGNOSIS_NOTE[1:]}")
    )
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(frames[0]),
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
        manufacturer_model_name=_lo(algorithm.display_name),
        software_versions=_software_versions(algorithm),
        series_description=_lo(series_description),
        specific_character_set=source.get("SpecificCharacterSet"),
        **_time_kwargs(when),
    )
    sc.copy_patient_and_study_information(_for_highdicom(source))
    sc.PatientOrientation = source.get("PatientOrientation", None)
    # General Series Laterality is Type 2C (dciodvfy requires it for SC without Image Laterality); highdicom accepts
    # only R/L, so the source's value - often empty for ultrasound - is copied by keyword.
    sc.Laterality = source.get("Laterality", None)
    _stamp_creation_time(sc, when)
    # The attributes below have no highdicom API (SCImage covers the mandatory modules only); set by keyword.
    sc.DateOfSecondaryCapture = when.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    sc.BurnedInAnnotation = "YES"  # the heatmap (and whatever text the source had) is burned into the pixels
    sc.ImageComments = comment
    sc.DerivationDescription = _lo(f"Lesion heatmap of {algorithm.display_name} blended over the source")
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if _frames_referenceable(source):
        reference.ReferencedFrameNumber = numbers if len(numbers) > 1 else numbers[0]
    sc.SourceImageSequence = [reference]

    if n > 1:
        # Multi-frame True Color SC IOD (PS3.3 A.8.5): Multi-frame module + SC Multi-frame Image/Vector modules.
        sc.SOPClassUID = _MULTIFRAME_TRUE_COLOR_SC
        sc.file_meta.MediaStorageSOPClassUID = _MULTIFRAME_TRUE_COLOR_SC
        sc.NumberOfFrames = n
        sc.FrameIncrementPointer = Tag("FrameLabelVector")
        sc.FrameLabelVector = [f"frame {f}"[:16] for f in numbers]  # SH: 16 characters
        sc.PixelData = np.ascontiguousarray(frames).tobytes()
    path = _output_path(output_dir, "overlay", sc.SOPInstanceUID)
    _write(sc, path)
    logger.info("wrote %d-frame overlay to %s", n, path)
    return path
