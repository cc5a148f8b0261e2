"""What every UltraAD DICOM output shares: the algorithm's identity, UIDs (random or deterministic), the per-frame
prediction, checks of source and predictions, equipment/time stamps and the safe, atomic write of a Part 10 file."""

from __future__ import annotations

import contextlib
import datetime as _dt
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
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from monai_ultraad import __version__ as _PACKAGE_VERSION
from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.dicom.source_header import conformant_header, iod_sop_class, is_multiframe_sop_class
from monai_ultraad.errors import InputDataError
from monai_ultraad.io_utils import atomic_write_stream

logger = logging.getLogger(__name__)

#: Manufacturer (developer) of the software that creates the objects (General Equipment module).
MANUFACTURER = "monai_ultraad"

#: Written into every overlay (and its series description) - it is a rendering, not an image to diagnose from.
NOT_FOR_DIAGNOSIS_NOTE = "Derived heatmap overlay - not for primary diagnosis"

NOT_FOR_CLINICAL_USE = "not for clinical use"

#: Deterministic mode needs a fixed clock too: highdicom stamps Instance Creation / Content Date and Time otherwise.
_FIXED_TIMESTAMP = _dt.datetime(2000, 1, 1, 0, 0, 0)

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SEGMENT_NUMBER = 1
_LO_MAX = 64  # characters of a DICOM LO (Long String) value
_HEATMAP_TOLERANCE = 1e-3


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
            name=truncate_lo(self.display_name),
            family=self.family_code(),
            version=truncate_lo(self.version),
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


class PredictionLike(Protocol):
    """Anything with FramePrediction's fields (e.g. :class:`monai_ultraad.inference.Prediction`)."""

    frame_number: int
    heatmap: np.ndarray
    class_probs: Mapping[str, float]
    anomaly_score: float


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_patient_data_in_warnings() -> Iterator[None]:
    """Silence highdicom's person-name checks: their warnings quote the (patient's) name, which must not reach logs.

    The names are still copied into the objects unchanged; only the warning text is suppressed.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*person name.*", category=UserWarning)
        yield


def truncate_lo(text: str) -> str:
    """``text`` cut to the 64 characters a DICOM LO value may hold."""
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def software_versions(algorithm: AlgorithmInfo) -> list[str]:
    # A list, not a tuple: pydicom accepts only lists for multi-valued elements (highdicom passes the value through).
    return [truncate_lo(f"monai_ultraad {_PACKAGE_VERSION}"), truncate_lo(f"{algorithm.name} {algorithm.version}")]


def number_of_frames(source: Dataset) -> int:
    return int(source.get("NumberOfFrames", 1) or 1)


def frames_referenceable(source: Dataset) -> bool:
    """Whether references to ``source`` may name its frames: only for multi-frame SOP classes (PS3.3 10.3). A
    single-frame SOP class object that nevertheless holds several frames (e.g. 2-frame Ultrasound Image Storage
    files) is referenced as a whole; which of its frames a SEG frame shows is then said by its Frame Label."""
    return is_multiframe_sop_class(source.SOPClassUID)


def is_multiframe(source: Dataset) -> bool:
    """A multi-frame object: it holds more than one frame or its SOP class is a multi-frame one (e.g. Ultrasound
    Multi-frame Image Storage with a single frame). References to frames of such objects carry frame numbers."""
    sop_class_name = pydicom.uid.UID(str(source.SOPClassUID)).name.lower()
    return number_of_frames(source) > 1 or "multi-frame" in sop_class_name or "enhanced" in sop_class_name


def check_source(source: Dataset) -> None:
    missing = [
        kw
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
        if kw not in source
    ]
    if missing:
        raise InputDataError(f"source dataset lacks {', '.join(missing)}; it is not an image object")


def checked_predictions(source: Dataset, predictions: Sequence[PredictionLike]) -> list[PredictionLike]:
    """Predictions sorted by frame number, after checking numbers, heatmap shapes/ranges and class probabilities."""
    if len(predictions) == 0:
        raise InputDataError("no predictions given")
    n_frames = number_of_frames(source)
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


def header_for_highdicom(source: Dataset) -> Dataset:
    """The header highdicom builds from: conformant, and with a retired SOP class looked up as the current one of the
    same IOD (highdicom's module tables know only current classes); :func:`restore_source_sop_class` puts the
    source's real class back into the references afterwards."""
    header = _header_only(source)
    header.SOPClassUID = iod_sop_class(source.SOPClassUID)
    return header


def restore_source_sop_class(dataset: Dataset, source: Dataset) -> None:
    """Every reference to ``source`` names its real SOP Class UID (see :func:`header_for_highdicom`)."""
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


def output_path(output_dir: str | os.PathLike[str], prefix: str, uid: str) -> Path:
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


def write_dataset(dataset: Dataset, path: Path) -> Path:
    """Serialise ``dataset`` as a DICOM Part 10 file and write it atomically.

    pydicom writes straight into the temporary file: the encoded object is never held in memory beside the dataset
    (and Pixel Data given as a file object, as the overlay's, is copied from that file in chunks).
    """
    def save(fh) -> None:
        try:
            dataset.save_as(fh, enforce_file_format=True)
        except OSError as exc:
            # pydicom re-raises a write error as a new OSError naming the tag, without errno or strerror; the
            # original (e.g. "No space left on device") is what callers report.
            original = exc.__cause__ or exc.__context__
            if isinstance(original, OSError) and original.errno is not None:
                raise original from None
            raise

    return atomic_write_stream(path, save)


def stamp_creation_time(dataset: Dataset, when: _dt.datetime) -> None:
    """Stamp ``when`` wherever highdicom stamped ``now`` itself (it has no parameter for these), for reproducibility.

    Instance Creation Date/Time (SOP Common) and the Contribution DateTime of highdicom's own Contributing Equipment
    item (model name "highdicom"); equipment copied from the source keeps its times.
    """
    dataset.InstanceCreationDate = when.strftime("%Y%m%d")
    dataset.InstanceCreationTime = when.strftime("%H%M%S")
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")


def time_kwargs(when: _dt.datetime) -> dict[str, Any]:
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


