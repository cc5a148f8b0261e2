"""JPEG XL frames of DICOM (transfer syntaxes 1.2.840.10008.1.2.4.110 / .111 / .112), decoded with imagecodecs.

pydicom 3.0 has no decoder for JPEG XL (it does not even know the UIDs). This module offers the small part of
pydicom's decoder interface that :mod:`monai_ultraad.dicom.reader` uses (``is_available``, ``missing_dependencies``,
``iter_array``), so a JPEG XL object goes through the reader exactly like any other codec: frames are taken one at a
time from the encapsulated Pixel Data with pydicom's own ``generate_frames`` and each is decoded by libjxl
(imagecodecs' ``jpegxl_decode``).

libjxl returns the colour it reconstructs: RGB for three samples (JPEG XL holds colour as RGB/XYB; for JPEG
recompression, .111, it undoes the JPEG's YCbCr itself), grey for one; the frame is reported accordingly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom.encaps import generate_frames
from pydicom.uid import UID

__all__ = ["JPEG_XL_TRANSFER_SYNTAXES", "JpegXLDecoder", "JpegXLTransferSyntax"]

JPEG_XL_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
)


class JpegXLTransferSyntax(UID):
    """A JPEG XL transfer syntax UID that answers what pydicom 3.0 cannot (it does not know these UIDs): like every
    compressed DICOM transfer syntax, explicit VR little endian with encapsulated pixel data. (pydicom's
    register_transfer_syntax is for private UIDs only; for these it breaks dcmread.)"""

    is_transfer_syntax = True
    is_little_endian = True
    is_implicit_VR = False
    is_encapsulated = True
    is_compressed = True
    is_deflated = False


def _jpegxl_decode():
    try:
        import imagecodecs
    except ImportError:
        return None
    if not getattr(imagecodecs, "JPEGXL", None) or not imagecodecs.JPEGXL.available:
        return None
    return imagecodecs.jpegxl_decode


class JpegXLDecoder:
    """Decoder of encapsulated JPEG XL pixel data, one frame at a time."""

    @property
    def is_available(self) -> bool:
        return _jpegxl_decode() is not None

    @property
    def missing_dependencies(self) -> list[str]:
        return [] if self.is_available else ["imagecodecs with JPEG XL support (pip install imagecodecs)"]

    def iter_array(self, src: Any, *, indices, raw: bool = False, validate: bool = True, **options: Any
                   ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """Yield ``(frame, {"photometric_interpretation": ...})`` for the 0-based frame ``indices``, in order.

        ``src`` is the Pixel Data value: bytes, or a binary file positioned at its first item (the Basic Offset
        Table), as the reader hands it.
        """
        decode = _jpegxl_decode()
        if decode is None:
            raise RuntimeError("JPEG XL needs imagecodecs with JPEG XL support (pip install imagecodecs)")
        wanted = sorted({int(i) for i in indices})
        number_of_frames = int(options.get("number_of_frames") or 1)
        rows, columns = options.get("rows"), options.get("columns")
        stored_as = str(options.get("photometric_interpretation", "")).strip().upper()
        position = 0
        for index, fragment in enumerate(generate_frames(src, number_of_frames=number_of_frames)):
            if position == len(wanted):
                break
            if index != wanted[position]:
                continue
            position += 1
            array = np.asarray(decode(fragment))
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if validate and rows and columns and array.shape[:2] != (int(rows), int(columns)):
                raise ValueError(f"JPEG XL frame {index + 1} is {array.shape[:2]}, the header says {(rows, columns)}")
            if array.ndim == 3:
                colour = "RGB"
            else:
                colour = "MONOCHROME1" if stored_as == "MONOCHROME1" else "MONOCHROME2"
            yield array, {"photometric_interpretation": colour}
        if position != len(wanted):
            raise ValueError(f"the Pixel Data holds fewer frames than the {number_of_frames} the header declares")
