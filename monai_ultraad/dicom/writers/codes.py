"""Coded concepts of UltraAD's DICOM outputs: predicted classes (SNOMED CT), the lesion segment's category and type,
and the private-scheme concepts no standard code names (declared as :data:`LOCAL_CODING_SCHEME`)."""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.sr.codedict import codes

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.errors import InputDataError

logger = logging.getLogger(__name__)

#: Private coding scheme for the concepts no standard code names (PS3.3 8.2: designators beginning with "99").
LOCAL_CODING_SCHEME = "99ULTRAAD"


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
PROBABILITY_CONCEPTS = {"normal": "P-NORMAL", "benign": "P-BENIGN", "malignant": "P-MALIGNANT"}

#: TID 1410 row "Qualitative Evaluations" (value type TEXT) - where free text may stand in a TID 1500 group.
QUALITATIVE_EVALUATIONS_TEXT = hd.sr.CodedConcept(
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


def lesion_category() -> hd.sr.CodedConcept:
    # SCT 49755003: "Morphologically Altered Structure" in current CID 7150 - pydicom still carries the former
    # SNOMED CT term "Morphologically Abnormal Structure" for the same code.
    return hd.sr.CodedConcept.from_code(codes.SCT.MorphologicallyAbnormalStructure)


def lesion_type() -> hd.sr.CodedConcept:
    # SCT 108369006 "Neoplasm" (CID 7151 / 7159): the "Neoplasm / Mass" of the segment.
    return hd.sr.CodedConcept.from_code(codes.SCT.Neoplasm)


