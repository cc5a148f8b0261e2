"""A TID 1500 report's measurement groups encoded as they are built, so that a cine's SR does not hold them all.

highdicom builds an SR from its whole content tree, and holds it about three times over (the caller's tree, the
deep copy it makes, and its own content items): for UltraAD's one TID 1410 group per frame that is about 0.3 MB of
Python objects per frame for 13 kB encoded. :class:`EncodedGroups` instead encodes each group's content items as
sequence items the moment the group is built (pydicom's own ``write_sequence_item``, in the SR's transfer syntax and
character set) and drops the objects. highdicom then builds the report with only the first and the last group, and
:func:`splice_measurement_groups` swaps the Imaging Measurements container's Content Sequence for the encoded items of
all of them: a raw element, which pydicom writes as it is. The file is byte for byte the one highdicom writes from
the whole tree (tests/dicom/test_sr_groups.py): same items, same order, same lengths.

What stays in memory per frame is its encoded group (13 kB), not its objects (tests/deploy/test_cine_memory.py).
"""

from __future__ import annotations

import copy

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence_item
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from monai_ultraad.dicom.writers.common import restore_source_sop_class

#: TID 1500 row 6, "Imaging Measurements" (DCM 126010): the container of the measurement groups.
IMAGING_MEASUREMENTS = ("126010", "DCM")
_CONTENT_SEQUENCE = Tag("ContentSequence")


class EncodedGroups:
    """Measurement groups (highdicom templates: lists of content items), encoded one after the other as they come.

    Args:
        evidence_header: the header highdicom builds the SR from (its first evidence,
            :func:`~monai_ultraad.dicom.writers.common.header_for_highdicom`): its Specific Character Set is the SR's,
            so that text values are encoded as the whole report would encode them.
        source: the source image, whose real SOP class the references name
            (:func:`~monai_ultraad.dicom.writers.common.restore_source_sop_class`, which the caller applies to the
            report highdicom builds, and which is applied here to what is encoded).
        encode: ``False``: nothing is encoded, every group is kept for highdicom (the reference the encoded report is
            tested against).
    """

    def __init__(self, evidence_header: Dataset, source: Dataset, encode: bool = True) -> None:
        self._encodings = convert_encodings(evidence_header.get("SpecificCharacterSet") or default_encoding)
        self._source, self.encode = source, encode
        self._buffer = DicomBytesIO()
        self._buffer.is_little_endian, self._buffer.is_implicit_VR = True, False  # Explicit VR Little Endian
        self.for_highdicom: list = []  # the groups highdicom builds the report from
        self.count = 0  # groups added

    def add(self, group, keep: bool = False) -> None:
        """Encode ``group``; ``keep`` (and always the first group): also hand it to highdicom, which collects the
        report's evidence from the groups it is given (the first and the last group reference all of it)."""
        self.count += 1
        if not self.encode:
            self.for_highdicom.append(group)
            return
        keep = keep or not self.for_highdicom
        # a kept group is encoded from a copy: highdicom must see the header's SOP class, not the source's real one
        items = [copy.deepcopy(item) for item in group] if keep else list(group)
        for item in items:
            restore_source_sop_class(item, self._source)
            write_sequence_item(self._buffer, item, self._encodings)
        if keep:
            self.for_highdicom.append(group)

    @property
    def encodings(self) -> list[str]:
        return list(self._encodings)

    def content_sequence(self) -> RawDataElement:
        """The Content Sequence holding every encoded item, as pydicom writes it (defined length)."""
        value = self._buffer.getvalue()
        return RawDataElement(_CONTENT_SEQUENCE, "SQ", len(value), value, 0, False, True)

    def splice(self, sr: Dataset) -> None:
        """:func:`splice_measurement_groups` of these groups into ``sr`` (nothing when not encoding)."""
        if self.encode:
            splice_measurement_groups(sr, self)


def splice_measurement_groups(sr: Dataset, groups: EncodedGroups) -> None:
    """Replace the content of ``sr``'s Imaging Measurements container by ``groups``.

    Call it last, just before the SR is written: reading the spliced element back from the dataset (any walk over its
    content) would decode it into objects again.
    """
    if sr.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise ValueError(f"measurement groups are encoded in Explicit VR Little Endian, the SR is in "
                         f"{sr.file_meta.TransferSyntaxUID}")
    if convert_encodings(sr.get("SpecificCharacterSet") or default_encoding) != groups.encodings:
        raise ValueError("measurement groups were encoded in another character set than the SR's")
    containers = [
        item for item in sr.ContentSequence
        if item.get("ValueType") == "CONTAINER" and "ConceptNameCodeSequence" in item
        and (item.ConceptNameCodeSequence[0].CodeValue, item.ConceptNameCodeSequence[0].CodingSchemeDesignator)
        == IMAGING_MEASUREMENTS
    ]
    if len(containers) != 1:
        raise ValueError(f"the SR has {len(containers)} Imaging Measurements containers, expected 1")
    container = containers[0]
    container[_CONTENT_SEQUENCE] = groups.content_sequence()
    # pydicom writes a dataset made in memory (no "original encoding") through its ambiguous-VR correction, which
    # reads every raw element below it back into objects. The SR and the container are marked as already in the
    # encoding they are written in (Explicit VR Little Endian, their own character set), so the raw items are written
    # as they are; nothing in either needs the correction (SR content has no ambiguous VR; the byte-for-byte test
    # would show it).
    for dataset in (sr, container):
        dataset.set_original_encoding(False, True, dataset._character_set)


__all__ = ["IMAGING_MEASUREMENTS", "EncodedGroups", "splice_measurement_groups"]
