"""Check the identifying UIDs of a source before anything is derived from it.

The new objects copy the source's Study Instance UID and reference its SOP Class, SOP Instance and Series Instance
UIDs, so a value outside the UI value representation (PS3.5 6.2 / 9.1: components of digits separated by dots, at
most 64 characters) would be copied into every output and make each of them invalid everywhere. Such a source is
refused with one line naming the attribute (never the value: a path-like "UID" may carry names). A component with a
leading zero (``1.2.03``) breaks a rule of PS3.5 9.1 but is common in real archives; it is accepted with a warning,
and the outputs reference it as it is (changing it would break the link to the source).
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

__all__ = ["IDENTIFYING_UIDS", "InvalidUIDError", "check_source_uids"]

#: UIDs of a source that its derived objects copy or reference.
IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_OPTIONAL_UIDS = ("FrameOfReferenceUID",)

_UI = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")
_UI_MAX = 64


class InvalidUIDError(ValueError):
    """A source UID that is not a UID; the message names the attribute and the rule broken."""


def check_source_uids(ds: Dataset) -> list[str]:
    """Raise :class:`InvalidUIDError` for a UID outside the UI VR; return warnings (leading-zero components).

    The SOP Class and SOP Instance UIDs of the file meta must also agree with the dataset when present.
    """
    warnings: list[str] = []
    for keyword in (*IDENTIFYING_UIDS, *_OPTIONAL_UIDS):
        value = ds.get(keyword)
        if value is None or str(value) == "":
            if keyword in IDENTIFYING_UIDS:
                raise InvalidUIDError(f"no {keyword}: the outputs could not reference the source")
            continue
        text = str(value).rstrip("\0").strip()  # a trailing NUL pads an odd-length UI value
        if len(text) > _UI_MAX:
            raise InvalidUIDError(f"{keyword} is {len(text)} characters long, a UID holds at most {_UI_MAX}")
        if not _UI.fullmatch(text):
            raise InvalidUIDError(f"{keyword} is not a UID (only digits and dots are allowed)")
        if _LEADING_ZERO.search(text):
            warnings.append(f"{keyword} has a component with a leading zero (PS3.5 9.1); referenced as it is")
    return warnings
