"""Tests of monai_ultraad.dicom.writers: SEG (fractional + binary), TID 1500 SR and secondary-capture overlay.

Real ultrasound DICOM files from shared/data/dicom are the sources (read in place, never modified). Every written
object goes through dciodvfy (dicom3tools) and dcmdump (DCMTK); the BINARY SEG also through dcmqi's
segimage2itkimage. Tests whose tool is not installed are skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.data import default_data_dir
from monai_ultraad.dicom.writers import (
    NOT_FOR_DIAGNOSIS_NOTE,
    AlgorithmInfo,
    FramePrediction,
    UIDFactory,
    class_code,
    codes,
    common,
    concept,
    ultrasound_pixel_spacing_mm,
    write_overlay,
    write_report,
    write_segmentations,
)
from monai_ultraad.errors import InputDataError

THRESHOLD = 0.5
_ROOT = default_data_dir()
DICOM_DIR = _ROOT / "dicom" if _ROOT is not None else None

US_RGB = "pydicom-data/US1_UNCR.dcm"  # Ultrasound Image Storage, RGB, uncompressed
US_MULTIFRAME = "pydicom-data/OBXXXX1A_rle_2frame.dcm"  # Ultrasound Multi-frame, 2 frames, RLE, palette colour
US_CINE = "fo-dicom/DIRW0007.dcm"  # Ultrasound Multi-frame, 65 frames, JPEG baseline, 2 regions
US_REGIONS = "dcm4che/YBR_422.dcm"  # one 2D tissue region in cm; its own SOP Instance UID is invalid (leading zero)
US_REGIONS_VALID = "pydicom-data/OBXXXX1A.dcm"  # two 2D tissue regions in cm, valid UIDs


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _source(name: str) -> pydicom.Dataset:
    if DICOM_DIR is None or not (DICOM_DIR / name).is_file():
        pytest.skip(f"real DICOM data not found ({name}): set ULTRAAD_DATA_DIR or place shared/data beside the project")
    return pydicom.dcmread(DICOM_DIR / name)


def _algorithm(random_weights: bool = True) -> AlgorithmInfo:
    return AlgorithmInfo(
        version="0.1.0",
        backbone="ViT-B-16",
        weights_id="openai",
        checkpoint_sha256="0123456789abcdef" * 4,
        random_weights=random_weights,
    )


def _blob(rows: int, cols: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :cols]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2)).astype(np.float32)


def _predictions(source: pydicom.Dataset, frame_numbers: list[int]) -> list[FramePrediction]:
    """A Gaussian lesion that moves with the frame number; distinct probabilities per frame; one empty heatmap."""
    rows, cols = int(source.Rows), int(source.Columns)
    preds = []
    for i, f in enumerate(frame_numbers):
        heat = _blob(rows, cols, rows * (0.3 + 0.1 * i), cols * 0.5, min(rows, cols) / 8)
        if i == 1:
            heat = np.zeros_like(heat)  # an empty frame: must still be a frame of the BINARY SEG
        p_mal = 0.15 + 0.2 * i
        probs = {"normal": 0.25, "benign": 0.75 - p_mal, "malignant": p_mal}
        preds.append(FramePrediction(frame_number=f, heatmap=heat, class_probs=probs, anomaly_score=0.6 + 0.05 * i))
    return preds


def _overlay(source: pydicom.Dataset, preds: list[FramePrediction]) -> np.ndarray:
    """Red heatmap blended over the source when it decodes as RGB, else over grey."""
    heat = np.stack([p.heatmap for p in preds])
    base = np.full(heat.shape + (3,), 96, np.uint8)
    if source.PhotometricInterpretation == "RGB" and not source.file_meta.TransferSyntaxUID.is_compressed:
        pixels = source.pixel_array
        base = np.broadcast_to(pixels.reshape((-1,) + pixels.shape[-3:]), base.shape).copy()
        if int(source.get("NumberOfFrames", 1)) > 1:
            base = pixels[[p.frame_number - 1 for p in preds]]
    red = np.zeros_like(base)
    red[..., 0] = 255
    alpha = (0.5 * heat)[..., None]
    return (base * (1 - alpha) + red * alpha).round().astype(np.uint8)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install dicom3tools dcmtk; pip install dcmqi)")
    return path


def _dciodvfy_errors(path: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    result = subprocess.run([_tool("dciodvfy"), str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error") and not any(s in line for s in ignore)]


def _dcmdump_ok(path: Path) -> None:
    result = subprocess.run([_tool("dcmdump"), str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("E:")], result.stderr


def _write_all(source, preds, out: Path, uids: UIDFactory, algorithm: AlgorithmInfo | None = None, **seg_kwargs):
    algorithm = algorithm or _algorithm()
    fractional, binary = write_segmentations(source, preds, THRESHOLD, out, algorithm, uids, **seg_kwargs)
    binary_ds = pydicom.dcmread(binary)
    report = write_report(source, binary_ds, preds, THRESHOLD, out, algorithm, uids)
    overlay = write_overlay(
        source, _overlay(source, preds), out, algorithm, uids, frame_numbers=[p.frame_number for p in preds]
    )
    return fractional, binary, report, overlay


def _seg_frames_by_source_frame(seg: pydicom.Dataset) -> dict[int, int]:
    mapping = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        mapping[int(ref.get("ReferencedFrameNumber", 1))] = i
    return mapping


def _check_segmentations(source, preds, fractional: Path, binary: Path, use_highdicom: bool = True) -> None:
    """FRACTIONAL == heatmap quantised to 1/255, BINARY == heatmap >= threshold, frame by frame."""
    multiframe = "NumberOfFrames" in source
    frame_numbers = [p.frame_number for p in preds]
    for path, kind in ((fractional, "FRACTIONAL"), (binary, "BINARY")):
        ds = pydicom.dcmread(path)
        assert ds.SegmentationType == kind
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PatientID == source.PatientID
        segment = ds.SegmentSequence[0]
        assert segment.SegmentLabel == "Lesion"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
        assert segment.SegmentAlgorithmName == "UltraAD (RANDOM WEIGHTS)"
        if kind == "BINARY":
            assert int(ds.NumberOfFrames) == len(preds)  # omit_empty_frames=False: frames line up with the SR
        if use_highdicom:
            seg = hd.seg.segread(path)
            if multiframe:
                got = seg.get_pixels_by_source_frame(
                    source_sop_instance_uid=source.SOPInstanceUID,
                    source_frame_numbers=frame_numbers,
                    combine_segments=False,
                    rescale_fractional=True,
                    assert_missing_frames_are_empty=True,  # the FRACTIONAL SEG omits all-zero frames
                )[..., 0]
            else:
                got = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False, rescale_fractional=True
                )[..., 0]
        else:  # read the stored frames directly
            stored = ds.pixel_array.reshape((-1, int(ds.Rows), int(ds.Columns))).astype(np.float32)
            if kind == "FRACTIONAL":
                stored = stored / float(ds.MaximumFractionalValue)
            by_frame = _seg_frames_by_source_frame(ds)
            got = np.stack(
                [
                    stored[by_frame[f] - 1] if f in by_frame else np.zeros(stored.shape[1:], np.float32)
                    for f in frame_numbers
                ]
            )
        for i, p in enumerate(preds):
            if kind == "FRACTIONAL":
                expected = np.round(p.heatmap * 255.0) / 255.0
                np.testing.assert_allclose(got[i], expected, atol=1e-6)
            else:
                np.testing.assert_array_equal(got[i].astype(bool), p.heatmap >= THRESHOLD)


def _check_report(source, preds, report: Path, binary: Path) -> None:
    sr = hd.sr.srread(report)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    content = sr.content
    assert content.get_observer_contexts()[0].observer_type == pydicom.sr.codedict.codes.DCM.Device
    groups = content.get_planar_roi_measurement_groups()
    assert len(groups) == len(preds)
    binary_ds = pydicom.dcmread(binary)
    seg_frame_of = _seg_frames_by_source_frame(binary_ds)
    multiframe = "NumberOfFrames" in source
    for group, p in zip(groups, preds):
        values = {m.name.value: m.value for m in group.get_measurements()}
        for c, code in codes.PROBABILITY_CONCEPTS.items():
            assert values[concept(code).value] == pytest.approx(p.class_probs[c], abs=1e-9)
        assert values["ANOMALY-SCORE"] == pytest.approx(p.anomaly_score, abs=1e-9)
        assert values["122411"] == pytest.approx(THRESHOLD)  # DCM "Threshold Value"
        assert values["111047"] == pytest.approx(p.class_probs["malignant"], abs=1e-9)  # DCM "Probability of cancer"
        for m in group.get_measurements():
            names = [
                item.TextValue
                for item in m[0].ContentSequence
                if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "111001"
            ]
            assert names == ["UltraAD (RANDOM WEIGHTS)"], "algorithm identification on every measurement"
        predicted = max(CLASS_NAMES, key=lambda c: p.class_probs[c])
        evaluation = [e for e in group.get_qualitative_evaluations() if e.name == concept("PRED-CLASS")]
        assert evaluation[0].value == class_code(predicted)
        image_items = group.referenced_segmentation_frame
        seg_ref, src_ref = (item.ReferencedSOPSequence[0] for item in image_items)
        assert seg_ref.ReferencedSOPInstanceUID == binary_ds.SOPInstanceUID
        assert int(seg_ref.ReferencedFrameNumber) == seg_frame_of[p.frame_number]
        assert src_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if multiframe:
            assert int(src_ref.ReferencedFrameNumber) == p.frame_number
        else:
            assert "ReferencedFrameNumber" not in src_ref
        texts = [item.TextValue for item in group[0].ContentSequence if item.ValueType == "TEXT"]
        assert any(t.startswith("RANDOM WEIGHTS:") and "not for clinical use" in t for t in texts)
    summaries = content.get_image_measurement_groups()
    if len(preds) > 1:
        (summary,) = summaries
        (maximum,) = summary.get_measurements()
        assert maximum.value == pytest.approx(max(p.anomaly_score for p in preds))
        assert maximum.derivation == pydicom.sr.codedict.codes.SCT.Maximum
    else:
        assert summaries == []
    evidence = {
        item.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, binary_ds.SOPInstanceUID}


def _check_overlay(source, preds, overlay: Path) -> None:
    ds = pydicom.dcmread(overlay)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert NOT_FOR_DIAGNOSIS_NOTE in ds.ImageComments and "RANDOM WEIGHTS" in ds.ImageComments
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    expected = _overlay(source, preds)
    if len(preds) == 1:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        np.testing.assert_array_equal(ds.pixel_array, expected[0])
    else:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color SC
        assert int(ds.NumberOfFrames) == len(preds)
        np.testing.assert_array_equal(ds.pixel_array, expected)


def _validate_all(paths, ignore: tuple[str, ...] = ()) -> None:
    for path in paths:
        assert _dciodvfy_errors(path, ignore) == [], path.name
        _dcmdump_ok(path)


# ---------------------------------------------------------------------------------------------------------------------
# real ultrasound sources
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_single_frame_rgb(tmp_path):
    source = _source(US_RGB)
    preds = _predictions(source, [1])
    paths = _write_all(source, preds, tmp_path, UIDFactory("single"))
    _validate_all(paths)
    _check_segmentations(source, preds, paths[0], paths[1])
    _check_report(source, preds, paths[2], paths[1])
    _check_overlay(source, preds, paths[3])


@pytest.mark.realdata
def test_multiframe_all_frames(tmp_path):
    source = _source(US_MULTIFRAME)
    preds = _predictions(source, [1, 2])
    paths = _write_all(source, preds, tmp_path, UIDFactory("multi"))
    _validate_all(paths)
    _check_segmentations(source, preds, paths[0], paths[1])
    _check_report(source, preds, paths[2], paths[1])
    _check_overlay(source, preds, paths[3])
    binary = pydicom.dcmread(paths[1])
    labels = [item.FrameContentSequence[0].FrameLabel for item in binary.PerFrameFunctionalGroupsSequence]
    indices = [
        list(item.FrameContentSequence[0].DimensionIndexValues) for item in binary.PerFrameFunctionalGroupsSequence
    ]
    assert labels == ["source frame 1", "source frame 2"]
    assert indices == [[1, 1], [1, 2]]  # unique per frame: (segment, source frame)
    # the empty second heatmap is dropped from the FRACTIONAL SEG only
    assert int(pydicom.dcmread(paths[0]).NumberOfFrames) == 1


@pytest.mark.realdata
def test_cine_subset_of_frames(tmp_path):
    """A 65-frame JPEG cine analysed on 3 frames: SEG frames reference source frames 5, 33 and 65."""
    source = _source(US_CINE)
    preds = _predictions(source, [5, 33, 65])
    paths = _write_all(source, preds, tmp_path, UIDFactory("cine"))
    _validate_all(paths)
    _check_segmentations(source, preds, paths[0], paths[1])
    _check_report(source, preds, paths[2], paths[1])
    _check_overlay(source, preds, paths[3])
    assert list(pydicom.dcmread(paths[3]).FrameLabelVector) == ["frame 5", "frame 33", "frame 65"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", [US_REGIONS, US_REGIONS_VALID])
def test_source_with_ultrasound_regions(tmp_path, name):
    source = _source(name)
    spacing = ultrasound_pixel_spacing_mm(source)
    region = source.SequenceOfUltrasoundRegions[0]
    assert spacing == pytest.approx((float(region.PhysicalDeltaY) * 10, float(region.PhysicalDeltaX) * 10))
    preds = _predictions(source, [1])
    fractional, binary = write_segmentations(source, preds, THRESHOLD, tmp_path, _algorithm(), UIDFactory("regions"))
    report = write_report(
        source, hd.seg.segread(binary), preds, THRESHOLD, tmp_path, _algorithm(), UIDFactory("regions"),
        pixel_spacing_mm=spacing,
    )
    overlay = write_overlay(source, _overlay(source, preds), tmp_path, _algorithm(), UIDFactory("regions"))
    paths = (fractional, binary, report, overlay)
    # dcm4che's YBR_422.dcm carries an invalid SOP Instance UID (a component with a leading zero). The outputs must
    # reference it as it is, so dciodvfy reports that value where it is referenced: that error (and its summary
    # line) belongs to the source. Any other error fails.
    ignore: tuple[str, ...] = ()
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", source.SOPInstanceUID):
        ignore = (source.SOPInstanceUID, "Dicom dataset contains invalid data values for Value Representations")
    _validate_all(paths, ignore)
    for seg_path in paths[:2]:
        # PS3.3 A.51-2: no Pixel Measures without a Frame of Reference; highdicom's reader refuses them otherwise
        shared = pydicom.dcmread(seg_path).SharedFunctionalGroupsSequence[0]
        assert "PixelMeasuresSequence" not in shared
        assert "FrameOfReferenceUID" not in pydicom.dcmread(seg_path)
    _check_segmentations(source, preds, paths[0], paths[1], use_highdicom=True)
    _check_report(source, preds, paths[2], paths[1])
    # the spacing reaches the SR as the lesion area: mask pixels x pixel area
    group = hd.sr.srread(report).content.get_planar_roi_measurement_groups()[0]
    areas = [m.value for m in group.get_measurements() if m.name.value == "42798000"]
    expected = np.count_nonzero(preds[0].heatmap >= THRESHOLD) * spacing[0] * spacing[1]
    assert areas == [pytest.approx(expected, rel=1e-6)] and expected > 0


@pytest.mark.realdata
def test_deterministic_uids_give_identical_files(tmp_path):
    source = _source(US_MULTIFRAME)
    preds = _predictions(source, [1, 2])
    first = _write_all(source, preds, tmp_path / "a", UIDFactory("same-seed"))
    second = _write_all(source, preds, tmp_path / "b", UIDFactory("same-seed"))
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    third = _write_all(source, preds, tmp_path / "c", UIDFactory())
    assert not {p.name for p in first} & {p.name for p in third}


@pytest.mark.realdata
def test_outputs_stay_inside_output_dir(tmp_path):
    source = _source(US_RGB)
    # Hostile values in the source must not influence file names.
    source.PatientID = "../../escape"
    source.PatientName = "../..^evil"
    source.SeriesDescription = "/etc/passwd"
    out = tmp_path / "out"
    paths = _write_all(source, _predictions(source, [1]), out / "sub" / "..", UIDFactory("paths"))
    for path, prefix in zip(paths, ("seg_fractional", "seg_binary", "sr", "overlay")):
        assert path.parent == out.resolve()
        assert re.fullmatch(rf"{prefix}_[0-9.]+\.dcm", path.name)
        assert pydicom.dcmread(path).SOPInstanceUID in path.name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temporary files left


@pytest.mark.realdata
def test_without_random_weights_no_warning(tmp_path):
    source = _source(US_RGB)
    preds = _predictions(source, [1])
    algorithm = _algorithm(random_weights=False)
    fractional, binary = write_segmentations(source, preds, THRESHOLD, tmp_path, algorithm, UIDFactory("ok"))
    report = write_report(source, pydicom.dcmread(binary), preds, THRESHOLD, tmp_path, algorithm, UIDFactory("ok"))
    overlay = write_overlay(source, _overlay(source, preds), tmp_path, algorithm, UIDFactory("ok"))
    for path in (fractional, binary, report, overlay):
        assert b"RANDOM WEIGHTS" not in path.read_bytes()
    assert NOT_FOR_DIAGNOSIS_NOTE in pydicom.dcmread(overlay).ImageComments
    assert pydicom.dcmread(binary).SegmentSequence[0].SegmentAlgorithmName == "UltraAD"


@pytest.mark.realdata
def test_report_accepts_highdicom_segmentation(tmp_path):
    source = _source(US_MULTIFRAME)
    preds = _predictions(source, [1, 2])
    _, binary = write_segmentations(source, preds, THRESHOLD, tmp_path, _algorithm(), UIDFactory("hd"))
    report = write_report(source, hd.seg.segread(binary), preds, THRESHOLD, tmp_path, _algorithm(), UIDFactory("hd"))
    _check_report(source, preds, report, binary)


@pytest.mark.realdata
def test_invalid_predictions_are_rejected(tmp_path):
    source = _source(US_RGB)
    good = _predictions(source, [1])[0]
    algorithm, uids = _algorithm(), UIDFactory("bad")
    cases = [
        FramePrediction(2, good.heatmap, good.class_probs, 0.5),  # frame outside the source
        FramePrediction(1, good.heatmap[:-1], good.class_probs, 0.5),  # wrong geometry
        FramePrediction(1, good.heatmap * 2.0, good.class_probs, 0.5),  # not a probability
        FramePrediction(1, good.heatmap, {"normal": 1.0}, 0.5),  # classes missing
    ]
    for bad in cases:
        with pytest.raises(InputDataError):
            write_segmentations(source, [bad], THRESHOLD, tmp_path, algorithm, uids)
    with pytest.raises(InputDataError):
        write_segmentations(source, [good, good], THRESHOLD, tmp_path, algorithm, uids)
    with pytest.raises(InputDataError):
        write_segmentations(source, [good], 1.5, tmp_path, algorithm, uids)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# pure unit tests (no data)
# ---------------------------------------------------------------------------------------------------------------------


def test_uid_factory_deterministic_and_random():
    a, b = UIDFactory("s"), UIDFactory("s")
    assert a.new("sop", "1.2.3", 4) == b.new("sop", "1.2.3", 4)
    assert a.new("sop", "1.2.3", 4) != a.new("series", "1.2.3", 4)
    assert a.now() == b.now()
    r = UIDFactory()
    assert not r.deterministic and r.new("sop") != r.new("sop")
    for uid in (a.new("x"), r.new("x")):
        assert re.fullmatch(r"[0-9.]+", uid) and len(uid) <= 64


def test_algorithm_identification():
    algorithm = _algorithm(random_weights=True)
    seg_id = algorithm.segmentation_identification()[0]
    assert seg_id.AlgorithmName == "UltraAD (RANDOM WEIGHTS)"
    assert seg_id.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    assert "checkpoint_sha256=" + "0123456789abcdef" * 4 in seg_id.AlgorithmParameters
    sr_id = algorithm.sr_identification()
    texts = [item.TextValue for item in sr_id if item.ValueType == "TEXT"]
    assert "UltraAD (RANDOM WEIGHTS)" in texts and "backbone=ViT-B-16" in texts and "weights_id=openai" in texts
    assert _algorithm(random_weights=False).display_name == "UltraAD"
    assert algorithm.device_uid() == _algorithm(random_weights=True).device_uid()
    with pytest.raises(ValueError):
        AlgorithmInfo(
            version="1", family="Astrology", backbone="b", weights_id="w", checkpoint_sha256="0", random_weights=False
        ).family_code()


def test_class_codes_are_the_documented_snomed_codes():
    assert (class_code("normal").value, class_code("normal").scheme_designator) == ("17621005", "SCT")
    assert (class_code("benign").value, class_code("benign").meaning) == ("3898006", "Neoplasm, benign")
    assert (class_code("malignant").value, class_code("malignant").meaning) == (
        "363346000",
        "Malignant neoplastic disease",
    )
    with pytest.raises(InputDataError):
        class_code("cyst")


def test_output_path_refuses_non_uids(tmp_path):
    assert common.output_path(tmp_path, "sr", "1.2.3").parent == tmp_path.resolve()
    for bad in ("../1.2", "1.2/3", "1..2", "", "1.2.3 ", "a.b"):
        with pytest.raises(ValueError):
            common.output_path(tmp_path, "sr", bad)
