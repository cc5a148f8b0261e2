"""What of an imperfect source header is copied into new objects, and which source UIDs are refused."""

from __future__ import annotations

import logging

import pytest
from pydicom.dataset import Dataset

from monai_ultraad.dicom.identifiers import InvalidUIDError, check_source_uids
from monai_ultraad.dicom.source_header import conformant_header, iod_sop_class, is_multiframe_sop_class


def _source(**values) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("vr_keyword", "raw", "expected"), [
    ("StudyDate", "1994.11.05", "19941105"),  # ACR-NEMA form (PS3.5 6.2 DA note)
    ("StudyDate", "20110824", "20110824"),
    ("StudyTime", "11:20:00", "112000"),  # ACR-NEMA form (PS3.5 6.2 TM note)
    ("StudyTime", "11:25", "1125"),
    ("StudyTime", "094836.214743984", "094836.214743"),  # TM holds at most six fractional digits
    ("StudyTime", "0905", "0905"),
    ("AcquisitionDateTime", "20110824094836.1234567", "20110824094836.123456"),
])
def test_dates_and_times_are_carried_in_the_current_form(vr_keyword, raw, expected):
    header = conformant_header(_source(**{vr_keyword: raw}))
    assert header[vr_keyword].value == expected


@pytest.mark.parametrize(("vr_keyword", "raw"), [("StudyDate", "5/4/2001"), ("StudyTime", "noon"),
                                               ("PatientBirthDate", "1994-13")])
def test_invalid_dates_and_times_are_left_out_with_a_warning_naming_the_attribute(vr_keyword, raw, caplog):
    with caplog.at_level(logging.WARNING):
        header = conformant_header(_source(**{vr_keyword: raw}), warn_label="a.dcm")
    assert vr_keyword in header and header[vr_keyword].is_empty  # Type 2: present, empty
    ours = " ".join(r.getMessage() for r in caplog.records if r.name == "monai_ultraad.dicom.source_header")
    assert f"a.dcm: {vr_keyword} left out" in ours and raw not in ours


def test_absent_type2_patient_and_study_attributes_are_written_empty_never_invented():
    header = conformant_header(_source(PatientName="Doe^J"))
    for keyword in ("PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName"):
        assert keyword in header and header[keyword].is_empty, keyword
    assert header.PatientName == "Doe^J"


def test_retired_and_multiframe_sop_classes():
    assert iod_sop_class("1.2.840.10008.5.1.4.1.1.6") == "1.2.840.10008.5.1.4.1.1.6.1"
    assert iod_sop_class("1.2.840.10008.5.1.4.1.1.3") == "1.2.840.10008.5.1.4.1.1.3.1"
    assert iod_sop_class("1.2.840.10008.5.1.4.1.1.6.1") == "1.2.840.10008.5.1.4.1.1.6.1"
    assert is_multiframe_sop_class("1.2.840.10008.5.1.4.1.1.3.1")
    assert is_multiframe_sop_class("1.2.840.10008.5.1.4.1.1.3")  # retired multi-frame
    assert not is_multiframe_sop_class("1.2.840.10008.5.1.4.1.1.6.1")
    assert not is_multiframe_sop_class("1.2.840.10008.5.1.4.1.1.6")


@pytest.mark.parametrize(("keyword", "value", "message"), [
    ("StudyInstanceUID", "../x", "StudyInstanceUID is not a UID"),
    ("SOPInstanceUID", "/data/patient/img.dcm", "SOPInstanceUID is not a UID"),
    ("SeriesInstanceUID", "1." + "2" * 70, "SeriesInstanceUID is 72 characters long"),
    ("SOPInstanceUID", "1.2..3", "SOPInstanceUID is not a UID"),
    ("SOPClassUID", "", "no SOPClassUID"),
])
def test_uids_outside_the_ui_vr_are_refused(keyword, value, message):
    with pytest.raises(InvalidUIDError, match=message) as info:
        check_source_uids(_source(**{keyword: value}))
    assert value == "" or value not in str(info.value)  # the value is never echoed


def test_a_leading_zero_component_is_accepted_with_a_warning():
    assert check_source_uids(_source(SOPInstanceUID="1.2.03.4")) == [
        "SOPInstanceUID has a component with a leading zero (PS3.5 9.1); referenced as it is"]
    assert check_source_uids(_source(SOPInstanceUID="1.2.0.4")) == []  # a lone zero is fine
