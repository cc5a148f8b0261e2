"""What of a source's header may be copied into a new object: conformant values only, nothing invented.

Real ultrasound files are often imperfect: Type 2 patient and study attributes are absent (highdicom's constructors
then fail with ``'Dataset' object has no attribute 'PatientID'``), dates and times are written in the pre-3.0
ACR-NEMA forms (``1994.11.05``, ``11:20:00``) or with more fractional digits than TM allows, and some files carry
retired SOP classes that highdicom's module tables do not know. :func:`conformant_header` returns a header-only copy
that a new object can be built from:

* absent Type 2 attributes of the Patient and General Study modules are added *empty* (PS3.5 7.4: Type 2 means
  present, possibly without a value) - no value is ever made up;
* DA / TM / DT values in the forms PS3.5 6.2 asks implementations to keep accepting for backward compatibility
  (``yyyy.mm.dd``, ``hh:mm:ss``) are carried in the current form, and a TM / DT fraction longer than six digits is
  cut to the six the VR holds; any other invalid date or time is left out (its value emptied), with a warning that
  names the attribute, never its value (patient data);
* every other element is copied as it is.

:func:`iod_sop_class` maps a retired SOP class to the current one of the same IOD for highdicom's *module tables*
only; references to the source keep its real SOP Class UID.
"""

from __future__ import annotations

import copy
import logging
import re

from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["TYPE2_PATIENT_STUDY_KEYWORDS", "conformant_header", "iod_sop_class", "is_multiframe_sop_class"]

logger = logging.getLogger(__name__)

#: Type 2 attributes of the Patient (C.7.1.1) and General Study (C.7.2.1) modules: present in every new object.
TYPE2_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

#: Retired SOP classes -> the current SOP class of the same IOD (PS3.4 Annex B; PS3.3 A.6, A.7).
_CURRENT_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.1.6": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3": "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage (Retired)
}

#: SOP classes whose instances are multi-frame objects, so that references to them may name frames (PS3.3 C.12.1.1.3
#: / 10.3: Referenced Frame Number only for multi-frame SOP classes). Enhanced and other multi-frame classes are
#: recognised by name.
_MULTIFRAME_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.3"})

_PIXEL_DATA_TAGS = (Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData"))
_DA = re.compile(r"^\d{8}$")
_DA_OLD = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA form, PS3.5 6.2 DA note
_TM = re.compile(r"^(\d{2})(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_TM_LONG_FRACTION = re.compile(r"^(\d{6}\.\d{6})\d+$")
_TM_OLD = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")  # ACR-NEMA form, PS3.5 6.2 TM note
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_DT_LONG_FRACTION = re.compile(r"^(\d{14}\.\d{6})\d+([+-]\d{4})?$")


def iod_sop_class(sop_class_uid: str) -> str:
    """The current SOP class of the same IOD as ``sop_class_uid`` (itself when it is not retired)."""
    return _CURRENT_SOP_CLASS.get(str(sop_class_uid), str(sop_class_uid))


def is_multiframe_sop_class(sop_class_uid: str) -> bool:
    """Whether instances of the SOP class are multi-frame objects, whose frames a reference may name."""
    from pydicom.uid import UID

    uid = str(sop_class_uid)
    if uid in _MULTIFRAME_SOP_CLASSES:
        return True
    name = UID(uid).name.lower()
    return "multi-frame" in name or "enhanced" in name or "multiframe" in name


def _valid_da(value: str) -> str | None:
    value = value.strip()
    if _DA.fullmatch(value):
        return value
    old = _DA_OLD.fullmatch(value)
    return "".join(old.groups()) if old else None


def _valid_tm(value: str) -> str | None:
    value = value.strip()
    if _TM.fullmatch(value):
        return value
    long = _TM_LONG_FRACTION.fullmatch(value)
    if long:
        return long.group(1)
    old = _TM_OLD.fullmatch(value)
    if old:
        hh, mm, ss, fraction = old.groups()
        return hh + mm + (ss or "") + ((fraction or "") if ss else "")
    return None


def _valid_dt(value: str) -> str | None:
    value = value.strip()
    if _DT.fullmatch(value):
        return value
    long = _DT_LONG_FRACTION.fullmatch(value)
    return long.group(1) + (long.group(2) or "") if long else None


_CHECKS = {"DA": _valid_da, "TM": _valid_tm, "DT": _valid_dt}


def _conform_element(element, label: str, notes: list[str]) -> None:
    """Bring one DA / TM / DT element into its VR's form in place, or empty it (with a note) when that cannot be."""
    check = _CHECKS.get(element.VR)
    if check is None or element.is_empty:
        return
    raw = element.value
    values = list(raw) if element.VM > 1 else [raw]
    fixed = [check(str(v)) for v in values]
    if all(f is not None for f in fixed):
        new = fixed if element.VM > 1 else fixed[0]
        if [str(v).strip() for v in values] != fixed:
            notes.append(f"{element.keyword or element.tag} written in the current {element.VR} form")
        element.value = new
    else:
        notes.append(f"{element.keyword or element.tag} left out: not a valid {element.VR} value")
        element.value = None


def conformant_header(source: Dataset, warn_label: str = "source") -> Dataset:
    """A deep, header-only copy of ``source`` whose copied values are conformant (see the module docstring).

    Stray item / delimitation tags (group FFFE) at the top level - some real files carry one, e.g. fo-dicom's
    DIRW0007 - are not data elements; pydicom cannot even convert them, so they are left out.

    Args:
        source: the source image.
        warn_label: how warnings name the source (a file name; never a patient attribute).
    """
    header = Dataset()
    for tag in source.keys():  # noqa: SIM118 - iterating the Dataset itself would convert (and choke on) FFFE tags
        if tag.group == 0xFFFE or tag in _PIXEL_DATA_TAGS:
            continue
        header.add(copy.deepcopy(source[tag]))
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    notes: list[str] = []
    for element in header.iterall():  # sequences too: dates in Referenced / Request items are copied as well
        try:
            _conform_element(element, warn_label, notes)
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot parse: left out, the image is not failed
            notes.append(f"{element.keyword or element.tag} left out: {type(exc).__name__}")
            element.value = None
    for keyword in TYPE2_PATIENT_STUDY_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, None)  # Type 2: present and empty, never invented
    for note in dict.fromkeys(notes):
        logger.warning("%s: %s", warn_label, note)
    return header
