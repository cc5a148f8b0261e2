"""Read ultrasound DICOM objects as RGB uint8 frames with their Sequence of Ultrasound Regions.

Every photometric interpretation an ultrasound scanner writes becomes (F, rows, cols, 3) uint8 RGB, the form the model
and the displays use:

* MONOCHROME2 / MONOCHROME1: scaled from Bits Stored to 8 bit (linear over the stored range), replicated to three
  channels; MONOCHROME1 is inverted so that bright means echogenic as in MONOCHROME2.
* RGB: as decoded (scaled to 8 bit when Bits Stored > 8).
* PALETTE COLOR: the Red/Green/Blue lookup tables (8 or 16 bit, plain or segmented) are applied; 16-bit table output
  is reduced to 8 bit.
* YBR_FULL / YBR_FULL_422: pydicom 3 converts to RGB itself when asked for processed (``raw=False``) frames, and JPEG
  codecs that already produced RGB report so; the decoder's reported output colour space is checked per frame and a
  conversion is only applied when it still says YBR, so no image is converted twice.
* YBR_ICT / YBR_RCT: the JPEG 2000 decoders undo the component transform and return RGB.

Frames are decoded one at a time straight from the file (the Pixel Data value is never loaded whole), so reading
every 10th frame of a long cine costs one decoded frame of working memory plus the frames kept.

Anything that is not a decodable ultrasound image is rejected with :class:`UnsupportedDicomError`, whose message is one
line naming the file (its name only: folder names may carry patient identifiers) and the reason.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, as_pixel_options, convert_color_space, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from monai_ultraad.dicom.jpegxl import JPEG_XL_TRANSFER_SYNTAXES, JpegXLDecoder, JpegXLTransferSyntax
from monai_ultraad.errors import InputDataError

__all__ = [
    "UNITS_CM",
    "US_IMAGE_SOP_CLASSES",
    "UltrasoundImage",
    "UltrasoundRegion",
    "UnsupportedDicomError",
    "open_ultrasound",
    "read_ultrasound",
    "scan_folder",
]

logger = logging.getLogger(__name__)

#: Physical Units X/Y Direction code for centimetres (PS3.3 C.8.5.5.1.15).
UNITS_CM = 3
#: Region Spatial Format 1 = 2D (tissue or flow); Region Data Type 1 = Tissue (PS3.3 C.8.5.5.1.1, C.8.5.5.1.2).
SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1

#: Ultrasound Image Storage, Ultrasound Multi-frame Image Storage and their retired predecessors (pydicom names only
#: the current two; the retired ones are in its UID dictionary as "... (Retired)" without a constant).
US_IMAGE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        pydicom.uid.UltrasoundImageStorage,
        pydicom.uid.UltrasoundMultiFrameImageStorage,
        "1.2.840.10008.5.1.4.1.1.6",
        "1.2.840.10008.5.1.4.1.1.3",
    }
)

# pydicom 3.0 does not know these names yet; a message should say "JPEG XL", not just the number.
_EXTRA_TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}

_PIXEL_DATA_TAG = 0x7FE00010
_FLOAT_PIXEL_TAGS = {0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_ITEM_TAG, _SEQUENCE_DELIMITER_TAG = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_DECODED_AS_RGB = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")
_SUPPORTED_PHOTOMETRIC = (*_MONOCHROME, "PALETTE COLOR", *_DECODED_AS_RGB)
_REQUIRED_PIXEL_ATTRIBUTES = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")


class UnsupportedDicomError(InputDataError):
    """A file that cannot be read as an ultrasound image; ``path`` and ``reason`` are kept for reports.

    The message is one line, ``"<file name>: <reason>"``; only the file name is shown because folder names of clinical
    exports often carry patient names or identifiers.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever a library put into its message
        super().__init__(f"{self.path.name}: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would call __init__ with the formatted message only; keep both fields across processes.
        return type(self), (self.path, self.reason)


@dataclass
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (0018,6011).

    Pixel bounds follow DICOM: ``x0, y0`` = Region Location Min X0/Y0, ``x1, y1`` = Region Location Max X1/Y1, and the
    Max values are **inclusive** (the region spans columns ``x0..x1`` and rows ``y0..y1``). Units codes: 3 = cm
    (see :data:`UNITS_CM`); the physical deltas are the size of one pixel step in those units.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int = 0
    data_type: int = 0
    flags: int = 0
    physical_units_x: int = 0
    physical_units_y: int = 0
    physical_delta_x: float = 0.0
    physical_delta_y: float = 0.0
    #: (rows, cols) of the image the region belongs to, used to clip :attr:`slices`; ``None`` = not clipped above.
    image_shape: tuple[int, int] | None = field(default=None, repr=False)

    @classmethod
    def from_item(cls, item: Dataset, image_shape: tuple[int, int] | None = None) -> UltrasoundRegion:
        """Build from one sequence item; raises ``ValueError`` when a Type 1 location bound is absent."""
        bounds = []
        for keyword in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1"):
            value = item.get(keyword)
            if value is None or value == "":
                raise ValueError(f"ultrasound region without {keyword}")
            bounds.append(int(value))

        def number(keyword: str, kind: type, default: Any) -> Any:
            value = item.get(keyword)
            return default if value is None or value == "" else kind(value)

        return cls(
            *bounds,
            spatial_format=number("RegionSpatialFormat", int, 0),
            data_type=number("RegionDataType", int, 0),
            flags=number("RegionFlags", int, 0),
            physical_units_x=number("PhysicalUnitsXDirection", int, 0),
            physical_units_y=number("PhysicalUnitsYDirection", int, 0),
            physical_delta_x=number("PhysicalDeltaX", float, 0.0),
            physical_delta_y=number("PhysicalDeltaY", float, 0.0),
            image_shape=image_shape,
        )

    @property
    def is_tissue(self) -> bool:
        """2D tissue (B-mode) region: spatial format 1 (2D) and data type 1 (tissue)."""
        return self.spatial_format == SPATIAL_FORMAT_2D and self.data_type == DATA_TYPE_TISSUE

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` when both directions are calibrated in cm with non-zero deltas, else ``None``.

        Signs are dropped: a negative delta only states the direction in which the physical axis grows.
        """
        if self.physical_units_x != UNITS_CM or self.physical_units_y != UNITS_CM:
            return None
        row_mm, col_mm = abs(self.physical_delta_y) * 10.0, abs(self.physical_delta_x) * 10.0
        return (row_mm, col_mm) if row_mm > 0 and col_mm > 0 else None

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row slice, col slice)`` selecting the region from a (rows, cols, ...) array, clipped to the image."""
        rows, cols = self.image_shape if self.image_shape is not None else (None, None)

        def clipped(lo: int, hi_inclusive: int, size: int | None) -> slice:
            start = max(lo, 0)
            stop = hi_inclusive + 1 if size is None else min(hi_inclusive + 1, size)
            return slice(start, max(stop, start))  # an inverted or outside region gives an empty slice

        return clipped(self.y0, self.y1, rows), clipped(self.x0, self.x1, cols)

    @property
    def area(self) -> int:
        """Pixels inside the (clipped) region."""
        rs, cs = self.slices
        return (rs.stop - rs.start) * (cs.stop - cs.start)


@dataclass
class UltrasoundImage:
    """An ultrasound object: RGB frames for display and the model, plus the header and regions.

    From :func:`read_ultrasound` every kept frame is decoded into ``frames``; from :func:`open_ultrasound` none is
    (``frames`` is None) and :meth:`iter_frames` decodes them one at a time, so a cine loop is never held whole.
    """

    path: Path
    #: The header (every element before Pixel Data); the Pixel Data itself is not kept to save memory.
    dataset: Dataset
    #: (F, rows, cols, 3) uint8 RGB, F = number of frames kept; None when opened for streaming.
    frames: np.ndarray | None
    #: 1-based numbers of the source frames kept, one per entry of ``frames``.
    frame_numbers: list[int]
    regions: list[UltrasoundRegion]
    #: Number of frames in the source object.
    number_of_frames: int
    #: The source Photometric Interpretation (the frames are always RGB).
    photometric: str
    _header: Any = field(default=None, repr=False)  # what iter_frames decodes from (a _Header)

    @property
    def tissue_regions(self) -> list[UltrasoundRegion]:
        """The 2D tissue (B-mode) regions, where the model should look."""
        return [region for region in self.regions if region.is_tissue]

    @property
    def is_multiframe(self) -> bool:
        return self.number_of_frames > 1

    @property
    def rows(self) -> int:
        return int(self.dataset.Rows)

    @property
    def cols(self) -> int:
        return int(self.dataset.Columns)

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` of the largest calibrated tissue region, or ``None``."""
        calibrated = [r for r in self.tissue_regions if r.pixel_spacing_mm is not None]
        return max(calibrated, key=lambda r: r.area).pixel_spacing_mm if calibrated else None

    def iter_frames(self, positions: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Yield the kept frames (or those at ``positions``, 0-based into ``frame_numbers``, ascending) as
        (rows, cols, 3) uint8 RGB, decoding one at a time from the file when the image was opened for streaming.

        Raises:
            UnsupportedDicomError: a frame could not be decoded (the message names the frame).
        """
        picked = range(len(self.frame_numbers)) if positions is None else [int(p) for p in positions]
        if self.frames is not None:
            for position in picked:
                yield self.frames[position]
            return
        indices = [self.frame_numbers[p] - 1 for p in picked]
        yield from _decode_frames(self.path, self._header, indices)


@dataclass
class _Header:
    """What :func:`_inspect` learned from the elements before Pixel Data."""

    dataset: Dataset
    transfer_syntax: UID
    decoder: Any  # pydicom.pixels.decoders.base.Decoder
    number_of_frames: int
    pixel_offset: int | None = None  # file offset of the Pixel Data value; None when decoding from `inline`
    pixel_vr: str | None = None
    inline: Dataset | None = None  # the whole dataset, only for deflated files (offsets there are not file offsets)
    palette: np.ndarray | None = None  # PALETTE COLOR: the 8-bit RGB lookup table (open_ultrasound)


def open_ultrasound(
    path: str | os.PathLike[str], frame_step: int = 1, max_frames: int | None = None
) -> UltrasoundImage:
    """Check an ultrasound DICOM file and read its header and regions, decoding no frame (``frames`` is None):
    :meth:`UltrasoundImage.iter_frames` then decodes the kept frames one at a time.

    Args and errors as :func:`read_ultrasound`, except that a frame that cannot be decoded is only found when it is
    decoded.
    """
    if int(frame_step) < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    path = Path(path)
    header = _inspect(path)
    ds = header.dataset
    rows, cols = int(ds.Rows), int(ds.Columns)
    indices = range(0, header.number_of_frames, int(frame_step))
    if max_frames is not None:
        indices = indices[: int(max_frames)]
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    header.palette = _palette_lut8(ds, path) if photometric == "PALETTE COLOR" else None
    return UltrasoundImage(
        path=path,
        dataset=ds,
        frames=None,
        frame_numbers=[i + 1 for i in indices],
        regions=_regions(ds, (rows, cols), path),
        number_of_frames=header.number_of_frames,
        photometric=photometric,
        _header=header,
    )


def read_ultrasound(
    path: str | os.PathLike[str], frame_step: int = 1, max_frames: int | None = None
) -> UltrasoundImage:
    """Decode an ultrasound DICOM file into RGB uint8 frames.

    Args:
        path: the DICOM file (Part 10 format, with the ``DICM`` prefix).
        frame_step: keep every ``frame_step``-th frame (1, 1 + step, ...), decoding only those.
        max_frames: keep at most this many frames.

    Raises:
        UnsupportedDicomError: not a DICOM file, truncated or unreadable, not an ultrasound image (Modality, SOP
            class), no Pixel Data, a transfer syntax no installed decoder handles, or decoding failed.
        ValueError: ``frame_step`` < 1 or ``max_frames`` < 1.
    """
    image = open_ultrasound(path, frame_step, max_frames)
    # Only the kept frames are ever allocated; decoding goes one frame at a time.
    frames = np.empty((len(image.frame_numbers), image.rows, image.cols, 3), dtype=np.uint8)
    for position, frame in enumerate(image.iter_frames()):
        frames[position] = frame
    image.frames = frames
    return image


def _decode_frames(path: Path, header: _Header, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """The frames at 0-based ``indices`` (ascending) as (rows, cols, 3) uint8 RGB, one decoded at a time."""
    ds = header.dataset
    position = -1
    try:
        for position, (array, decoded_as) in enumerate(_iter_decoded(path, header, indices)):
            yield _to_rgb8(array, decoded_as, ds, header.palette, path)
    except UnsupportedDicomError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError and plugin-specific errors
        frame = indices[position + 1] + 1 if position + 1 < len(indices) else "?"
        raise UnsupportedDicomError(path, f"could not decode frame {frame}: {type(exc).__name__}: {exc}") from exc
    if position + 1 != len(indices):
        raise UnsupportedDicomError(path, f"the decoder returned {position + 1} of {len(indices)} frames")


def scan_folder(folder: str | os.PathLike[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Find the ultrasound DICOM images under ``folder`` (recursively), reading headers only.

    Returns:
        ``(candidates, skipped)``: the files :func:`read_ultrasound` should be able to read, and every other entry with
        the reason it was left out (hidden, not DICOM, not US, SEG/SR/other non-image, no decoder, truncated...).
        Both are sorted by path, so runs are deterministic.

    Symbolic links are never followed out of ``folder``: links to folders are not entered, links to files are
    accepted only when their target lies inside ``folder``. Hidden files and folders (name starting with ``.``)
    are skipped.

    Raises:
        InputDataError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputDataError(f"not a folder: {root}")
    resolved_root = root.resolve()
    candidates: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith("."):
                skipped.append((sub, "hidden folder"))
                dirnames.remove(name)
            elif sub.is_symlink():  # os.walk would not enter it anyway; say so instead of silently dropping it
                skipped.append((sub, "symbolic link to a folder (not followed)"))
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            file = here / name
            reason = _skip_reason_before_reading(file, name, resolved_root)
            if reason is None:
                try:
                    _inspect(file)
                except UnsupportedDicomError as exc:
                    reason = exc.reason
            if reason is None:
                candidates.append(file)
            else:
                skipped.append((file, reason))
    return sorted(candidates), sorted(skipped, key=lambda item: item[0])


def _skip_reason_before_reading(file: Path, name: str, resolved_root: Path) -> str | None:
    """Reasons that need no reading: hidden, link leaving the folder, not a regular file."""
    if name.startswith("."):
        return "hidden file"
    if file.is_symlink():
        try:
            target = file.resolve(strict=True)
        except (OSError, RuntimeError):
            return "broken symbolic link"
        if not target.is_relative_to(resolved_root):
            return "symbolic link to a file outside the folder (not followed)"
    if not file.is_file():
        return "not a regular file"
    return None


def _inspect(path: Path) -> _Header:
    """Read the header (no pixel values) and check everything that can be checked before decoding."""
    if not path.is_file():
        raise UnsupportedDicomError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with path.open("rb") as f:
            try:
                ds = pydicom.dcmread(f, force=False, stop_before_pixels=True)
            except InvalidDicomError:
                raise UnsupportedDicomError(
                    path, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)"
                ) from None
            except Exception as exc:  # pydicom reports truncation inside sequences as OSError, struct.error, ...
                raise UnsupportedDicomError(
                    path, f"truncated or unreadable DICOM file: {type(exc).__name__}: {exc}"
                ) from exc
            deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
            # Truncation first: a file cut inside its header would otherwise be misreported as "no Modality" & co.
            # (a deflated dataset is a zlib stream, where file positions mean nothing; zlib reports truncation).
            end = f.tell()
            if not deflated and end >= os.fstat(f.fileno()).st_size and not _header_ends_cleanly(ds, end):
                raise UnsupportedDicomError(path, "truncated DICOM file: it ends inside the header, before Pixel Data")
            transfer_syntax = _transfer_syntax(ds, path)
            _check_ultrasound_image(ds, path)
            if deflated:
                # The dataset of a deflated file is a zlib stream: file offsets mean nothing, read it whole.
                return _inspect_deflated(path, transfer_syntax)
            # The decoder check comes first: an unknown transfer syntax also means unknown byte order and VR rules.
            decoder = _decoder(transfer_syntax, path)
            pixel_offset, pixel_vr, length = _locate_pixel_data(f, transfer_syntax, path)
            _check_image_pixel_module(ds, path)
            header = _Header(ds, transfer_syntax, decoder, _number_of_frames(ds, path), pixel_offset, pixel_vr)
            _check_pixel_data_complete(f, header, length, path)
    except OSError as exc:  # permission denied, I/O error; strerror only, as str(exc) repeats the full path
        raise UnsupportedDicomError(path, f"cannot read the file: {exc.strerror or type(exc).__name__}") from exc
    return header


def _transfer_syntax(ds: Dataset, path: Path) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = None if meta is None else meta.get("TransferSyntaxUID")
    if not uid:
        raise UnsupportedDicomError(path, "unreadable DICOM file: no (0002,0010) Transfer Syntax UID in the file meta")
    if str(uid) in JPEG_XL_TRANSFER_SYNTAXES:
        return JpegXLTransferSyntax(str(uid))  # its encoding, which pydicom 3.0 does not know
    return UID(str(uid))


def _check_ultrasound_image(ds: Dataset, path: Path) -> None:
    """Reject non-image objects (by SOP class) and non-ultrasound images (by Modality)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if sop_class:
        sop_class = UID(str(sop_class))
        name = sop_class.name
        known = name != str(sop_class)
        # Image SOP classes are named "... Image Storage" (or "... Volume Storage", e.g. Enhanced US Volume); SEG,
        # SR, presentation states, key objects, encapsulated documents, waveforms, DICOMDIR... are not images.
        # Private (unknown) SOP classes are left to the Modality and Pixel Data checks.
        if (
            str(sop_class) not in US_IMAGE_SOP_CLASSES
            and known
            and not ("Image Storage" in name or "Volume Storage" in name)
        ):
            raise UnsupportedDicomError(path, f"SOP class '{name}' ({sop_class}) is not an image object")
    modality = str(ds.get("Modality", "") or "").strip()
    if not modality:
        raise UnsupportedDicomError(path, "no Modality (0008,0060): not an ultrasound ('US') image")
    if modality.upper() != "US":
        raise UnsupportedDicomError(path, f"Modality '{modality}' is not ultrasound ('US')")


def _decoder(transfer_syntax: UID, path: Path) -> Any:
    """The pydicom decoder for the transfer syntax, if one is implemented and has an installed plugin."""
    name = transfer_syntax.name
    if name == str(transfer_syntax):
        name = _EXTRA_TRANSFER_SYNTAX_NAMES.get(str(transfer_syntax), "unknown transfer syntax")
    label = f"transfer syntax '{name}' ({transfer_syntax})"
    if str(transfer_syntax) in JPEG_XL_TRANSFER_SYNTAXES:  # not in pydicom 3.0: imagecodecs (dicom/jpegxl.py)
        decoder = JpegXLDecoder()
        if not decoder.is_available:
            raise UnsupportedDicomError(path, f"{label} cannot be decoded: {'; '.join(decoder.missing_dependencies)}")
        return decoder
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise UnsupportedDicomError(
            path, f"{label} cannot be decoded: pydicom {pydicom.__version__} has no decoder for it"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise UnsupportedDicomError(path, f"{label} cannot be decoded: no decoder plugin installed ({missing})")
    return decoder


def _locate_pixel_data(f: BinaryIO, transfer_syntax: UID, path: Path) -> tuple[int, str | None, int]:
    """Check the element where ``dcmread(stop_before_pixels=True)`` stopped; return (value offset, VR, length)."""
    endian = "<" if transfer_syntax.is_little_endian else ">"
    head = f.read(8)
    if not head:  # the header ended cleanly (checked by the caller) with no pixel element after it
        raise UnsupportedDicomError(path, "no Pixel Data (7FE0,0010): the object holds no image")
    if len(head) < 8:
        raise UnsupportedDicomError(path, "truncated DICOM file: it ends inside the Pixel Data element header")
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = (group << 16) | element
    if tag in _FLOAT_PIXEL_TAGS:
        raise UnsupportedDicomError(
            path, f"no Pixel Data (7FE0,0010), only {_FLOAT_PIXEL_TAGS[tag]}: not an ultrasound image"
        )
    if tag != _PIXEL_DATA_TAG:  # cannot happen with pydicom's stop_when, kept so a change there fails loudly
        raise UnsupportedDicomError(
            path, f"unreadable DICOM file: expected Pixel Data, found ({group:04X},{element:04X})"
        )
    if transfer_syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        return f.tell(), None, length
    vr = head[4:6].decode("ascii", errors="replace")
    rest = f.read(4)  # OB/OW have two reserved bytes then a 32-bit length
    if len(rest) < 4:
        raise UnsupportedDicomError(path, "truncated DICOM file: it ends inside the Pixel Data element header")
    (length,) = struct.unpack(f"{endian}L", rest)
    return f.tell(), vr, length


def _header_ends_cleanly(ds: Dataset, end: int) -> bool:
    """Whether the last top-level element read ends exactly where reading stopped (a complete, pixel-less object).

    pydicom stops silently at the end of a file, keeping a value cut short; comparing the last raw element's declared
    end with the end of the file tells a truncated header from an object that simply has no Pixel Data.
    """
    elements = list(ds._dict.values())  # raw elements keep their file offsets; converted ones do not
    if not elements:
        return False
    last = elements[-1]
    value_tell, length, value = getattr(last, "value_tell", None), getattr(last, "length", None), last.value
    if value_tell is None or length is None or length == _UNDEFINED_LENGTH:
        return True  # a sequence, already parsed: pydicom would have raised had it been cut short
    if isinstance(value, (bytes, bytearray)) and len(value) < length:
        return False
    return value_tell + length == end


def _check_image_pixel_module(ds: Dataset, path: Path) -> None:
    missing = [keyword for keyword in _REQUIRED_PIXEL_ATTRIBUTES if ds.get(keyword) in (None, "")]
    if missing:
        raise UnsupportedDicomError(path, f"Image Pixel module incomplete: no {', '.join(missing)}")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise UnsupportedDicomError(path, f"Photometric Interpretation '{photometric}' is not supported")
    samples = int(ds.SamplesPerPixel)
    expected_samples = 3 if photometric in _DECODED_AS_RGB else 1
    if samples != expected_samples:
        raise UnsupportedDicomError(path, f"Samples per Pixel {samples} does not fit '{photometric}'")
    if int(ds.Rows) < 1 or int(ds.Columns) < 1:
        raise UnsupportedDicomError(path, f"empty image: Rows {ds.Rows}, Columns {ds.Columns}")
    if photometric == "PALETTE COLOR":
        for colour in ("Red", "Green", "Blue"):
            if f"{colour}PaletteColorLookupTableDescriptor" not in ds:
                raise UnsupportedDicomError(path, f"PALETTE COLOR without a {colour} Palette Color Lookup Table")


def _number_of_frames(ds: Dataset, path: Path) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UnsupportedDicomError(path, f"invalid Number of Frames {value!r}") from None
    return n if n > 0 else 1  # 0 is a known writer bug for single frames; pydicom reads those as one frame too


def _check_pixel_data_complete(f: BinaryIO, header: _Header, length: int, path: Path) -> None:
    """Detect truncation before decoding: native data must fit the file, encapsulated items must all be there."""
    size = os.fstat(f.fileno()).st_size
    start = header.pixel_offset or 0
    if length != _UNDEFINED_LENGTH:
        if start + length > size:
            raise UnsupportedDicomError(
                path, f"truncated DICOM file: Pixel Data declares {length} bytes but the file holds {size - start}"
            )
        expected = get_expected_length(header.dataset)
        if not header.transfer_syntax.is_encapsulated and length < expected:
            raise UnsupportedDicomError(
                path, f"Pixel Data holds {length} bytes, but Rows x Columns x frames x samples need {expected}"
            )
        return
    _encapsulated_item_lengths(f, start, size, path)


def _encapsulated_item_lengths(f: BinaryIO, start: int, size: int, path: Path) -> list[int]:
    """Lengths of the (FFFE,E000) items (offset table, then fragments) of encapsulated Pixel Data at ``start``, up to
    the (FFFE,E0DD) delimiter; only the 8-byte item headers are read, the fragments are skipped with ``seek``.

    Kept by hand rather than :func:`pydicom.encaps.generate_fragments` (which walks the same items) because that one
    cannot tell a truncated file: a fragment cut short is yielded short and a missing delimiter ends the walk as
    quietly as a present one (``tests/dicom/test_reader_encapsulated.py`` pins both walks against each other). It
    also reads every fragment into memory, where this check needs none.
    """
    f.seek(start)
    lengths = []
    while True:
        item = f.read(8)
        if len(item) < 8:
            raise UnsupportedDicomError(path, "truncated DICOM file: the encapsulated Pixel Data has no end delimiter")
        group, element, item_length = struct.unpack("<HHL", item)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER_TAG:
            return lengths
        if tag != _ITEM_TAG or item_length == _UNDEFINED_LENGTH:
            raise UnsupportedDicomError(
                path, f"corrupt encapsulated Pixel Data: unexpected ({group:04X},{element:04X})"
            )
        if f.tell() + item_length > size:
            raise UnsupportedDicomError(
                path, "truncated DICOM file: a Pixel Data fragment runs past the end of the file"
            )
        lengths.append(item_length)
        f.seek(item_length, os.SEEK_CUR)


def _inspect_deflated(path: Path, transfer_syntax: UID) -> _Header:
    """Header of a Deflated Explicit VR Little Endian file; the inflated dataset is kept for decoding."""
    try:
        # Read twice rather than copy and delete: a Dataset copy shares its elements with the original.
        header = pydicom.dcmread(path, force=False, stop_before_pixels=True)
        full = pydicom.dcmread(path, force=False)
    except Exception as exc:
        raise UnsupportedDicomError(
            path, f"truncated or unreadable deflated DICOM file: {type(exc).__name__}: {exc}"
        ) from exc
    if "PixelData" not in full:
        raise UnsupportedDicomError(path, "no Pixel Data (7FE0,0010): the object holds no image")
    decoder = _decoder(transfer_syntax, path)
    _check_image_pixel_module(header, path)
    return _Header(header, transfer_syntax, decoder, _number_of_frames(header, path), inline=full)


def _iter_decoded(path: Path, header: _Header, indices: range):
    """Yield ``(frame array, colour space the decoder returned)`` for the frame ``indices`` (0-based), in order."""
    if not len(indices):
        return
    common = {"indices": indices, "raw": False, "validate": True}
    if header.inline is not None:
        for array, meta in header.decoder.iter_array(header.inline, **common):
            yield array, str(meta.get("photometric_interpretation", header.dataset.PhotometricInterpretation))
        return
    options = as_pixel_options(header.dataset, transfer_syntax_uid=header.transfer_syntax, pixel_keyword="PixelData")
    if header.pixel_vr:
        options["pixel_vr"] = header.pixel_vr  # OB vs OW decides byte swapping of big endian 8-bit data
    with path.open("rb") as f:
        f.seek(header.pixel_offset or 0)
        for array, meta in header.decoder.iter_array(f, **common, **options):
            yield array, str(meta.get("photometric_interpretation", header.dataset.PhotometricInterpretation))


def _to_rgb8(array: np.ndarray, decoded_as: str, ds: Dataset, palette: np.ndarray | None, path: Path) -> np.ndarray:
    """One decoded frame -> (rows, cols, 3) uint8 RGB."""
    decoded_as = decoded_as.strip().upper()
    bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if decoded_as in ("YBR_FULL", "YBR_FULL_422"):
        # The decoder left YCbCr (it reports what it returns); pydicom's conversion works on 8-bit YBR_FULL, and
        # YBR_FULL_422 frames have already been upsampled to full resolution by the decoder.
        array = convert_color_space(array, "YBR_FULL", "RGB")
        decoded_as = "RGB"
    if decoded_as == "RGB":
        if array.ndim != 3 or array.shape[-1] != 3:
            raise UnsupportedDicomError(path, f"decoded colour frame has shape {array.shape}, expected (rows, cols, 3)")
        return _to_uint8(array, bits_stored, signed)
    if array.ndim != 2:
        raise UnsupportedDicomError(path, f"decoded {decoded_as} frame has shape {array.shape}, expected (rows, cols)")
    if decoded_as == "PALETTE COLOR" and palette is not None:
        first = int(_descriptor(ds)[1])
        index = np.clip(array.astype(np.int64) - first, 0, len(palette) - 1)  # out-of-table values: end entries
        return palette[index]
    if decoded_as in _MONOCHROME:
        grey = _to_uint8(array, bits_stored, signed)
        if decoded_as == "MONOCHROME1":
            grey = 255 - grey  # MONOCHROME1: minimum value is white
        return np.repeat(grey[..., None], 3, axis=-1)
    raise UnsupportedDicomError(path, f"the decoder returned '{decoded_as}' pixels, which cannot be turned into RGB")


def _to_uint8(array: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Scale the stored range (``bits_stored`` bits, signed or not) linearly onto 0..255."""
    if array.dtype == np.uint8 and bits_stored == 8 and not signed:
        return array
    top = (1 << bits_stored) - 1
    values = array.astype(np.int64)
    if signed:
        values = values + (1 << (bits_stored - 1))  # -2^(b-1)..2^(b-1)-1 -> 0..2^b-1
    values = np.clip(values, 0, top)
    return ((values * 255 + top // 2) // top).astype(np.uint8)


def _descriptor(ds: Dataset) -> tuple[int, int, int]:
    entries, first, bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    return entries or 65536, first, bits  # 0 entries means 2^16 (PS3.3 C.7.6.3.1.5)


def _palette_lut8(ds: Dataset, path: Path) -> np.ndarray:
    """The (entries, 3) uint8 RGB palette, built once per file with pydicom (plain and segmented tables)."""
    entries, first, _bits = _descriptor(ds)
    index_dtype = np.int32 if int(ds.get("PixelRepresentation") or 0) == 1 else np.uint32
    try:
        table = apply_color_lut(np.arange(first, first + entries, dtype=np.int64).astype(index_dtype), ds)
    except Exception as exc:
        raise UnsupportedDicomError(path, f"unusable palette colour lookup table: {type(exc).__name__}: {exc}") from exc
    table = np.asarray(table).reshape(entries, 3)
    if table.dtype == np.uint8:
        return table
    # 16-bit table output: keep the high byte. Some writers declare 16 bits but store 0..255 values; shifting those
    # would blacken the image, so a table that never exceeds 255 is taken as 8-bit values.
    if int(table.max()) <= 255:
        return table.astype(np.uint8)
    return (table >> 8).astype(np.uint8)


def _regions(ds: Dataset, image_shape: tuple[int, int], path: Path) -> list[UltrasoundRegion]:
    regions = []
    for number, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or [], start=1):
        try:
            regions.append(UltrasoundRegion.from_item(item, image_shape))
        except (ValueError, TypeError) as exc:
            # A broken calibration item must not make the image unreadable; it is reported and left out.
            logger.warning("%s: ultrasound region %d skipped: %s", path.name, number, exc)
    return regions
