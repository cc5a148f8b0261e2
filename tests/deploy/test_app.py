"""The MONAI Deploy app end to end, as a hospital runs it: a study folder in, DICOM SEG / SR / SC out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_ultraad import engine
from tests.record_schema import check_record

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.realdata


def study_region(h: int, w: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive bounds of the tissue region of the wrapped bus_uclm image of ``h`` x ``w``."""
    return 20, 10, w - 21, h - 11


REAL_FILES = ["pydicom-data/US1_UNCR.dcm", "pydicom-data/OBXXXX1A_rle_2frame.dcm", "dcm4che/YBR_422.dcm"]


@pytest.fixture(scope="module")
def study(data_dir, tmp_path_factory) -> Path:
    """A study folder: a bus_uclm image wrapped as US DICOM, real US files, and files that must be skipped."""
    from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

    folder = tmp_path_factory.mktemp("study")
    rgb = np.asarray(Image.open(data_dir / "bus_uclm" / "images" / "ALWI_000.jpg").convert("RGB"))
    h, w = rgb.shape[:2]
    wrap_as_ultrasound(rgb, folder / "uclm.dcm", with_region=True, region_bounds=study_region(h, w),
                       lossy_compression_method="ISO_10918_1", laterality="L")
    for name in REAL_FILES:
        shutil.copy(data_dir / "dicom" / name, folder / Path(name).name)
    (folder / "notes.txt").write_text("not a DICOM file")
    return folder


def run_app(input_dir: Path, output_dir: Path, model: Path, *extra: str, env_paths: bool = False):
    env = {**os.environ, "PYTHONWARNINGS": "ignore",  # this checkout's package, also where another is installed
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    args = [sys.executable, str(REPO / "deploy_app"), "--allow-random-init", "--deterministic-uids", "test", *extra]
    if env_paths:  # as in a MAP: paths from the HOLOSCAN_* variables
        env.update(HOLOSCAN_INPUT_PATH=str(input_dir), HOLOSCAN_OUTPUT_PATH=str(output_dir),
                   HOLOSCAN_MODEL_PATH=str(model))
    else:
        args += ["-i", str(input_dir), "-o", str(output_dir), "-m", str(model)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def outputs(study, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run_app(study, out, checkpoint)
    return out, result


def _by_kind(out: Path, kind: str) -> list[Path]:
    return sorted(out.glob(f"{kind}_[0-9]*.dcm"))  # file names end in a UID: sr_<uid> is not sr_viewer_<uid>


def test_exit_code_and_run_report(outputs):
    out, result = outputs
    report = json.loads((out / "ultraad_run.json").read_text())
    assert result.returncode == 0, result.stderr[-3000:]  # every source processed (JPEG XL decodes now)
    assert sorted(report["processed"]) == sorted(["uclm.dcm", *[Path(n).name for n in REAL_FILES]])
    assert report["failed"] == []
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert "not a DICOM" in skipped["notes.txt"]  # a text file in a study folder is not a failure
    assert "ALWI" not in result.stdout + result.stderr  # no patient-derived names in the logs


def test_every_object_passes_dciodvfy_and_dcmdump(outputs):
    if not shutil.which("dciodvfy") or not shutil.which("dcmdump"):
        pytest.skip("dicom3tools / dcmtk not installed (apt-get install dicom3tools dcmtk)")
    out, _ = outputs
    files = sorted(out.glob("*.dcm"))
    viewer = _by_kind(out, "seg_viewer") + _by_kind(out, "sr_viewer")
    # fractional SEG, binary SEG, SR, overlay per image; one viewer SEG (+ .seg.nrrd) per analysed frame: 1 + 1 +
    # 2 (OBXXXX1A_rle_2frame) + 1
    assert len(files) - len(viewer) == 4 * (1 + len(REAL_FILES))
    assert len(_by_kind(out, "seg_viewer")) == 5 and len(list(out.glob("seg_viewer_*.seg.nrrd"))) == 5
    assert len(_by_kind(out, "sr_viewer")) <= 1 + len(REAL_FILES)  # one per image with a lesion to outline
    for path in files:
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        # YBR_422.dcm's own SOP Instance UID is invalid (a leading zero); objects must reference it as it is, so
        # dciodvfy reports that value (and its summary line) wherever it appears. Nothing else is tolerated.
        source_uid = pydicom.dcmread(REPO.parent / "shared" / "data" / "dicom" / "dcm4che" / "YBR_422.dcm",
                                     stop_before_pixels=True).SOPInstanceUID
        if any(source_uid in e for e in errors):
            errors = [e for e in errors if source_uid not in e
                      and e != "Error - Dicom dataset contains invalid data values for Value Representations"]
        assert not errors, f"{path.name}: {errors}"
        assert subprocess.run(["dcmdump", str(path)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def expected(study, checkpoint, data_dir, tmp_path_factory):
    """The model's answer for the wrapped bus_uclm image, found independently of the app: the original JPEG's pixels,
    cut to the tissue region the study declares, through ``ultraad predict`` (PNG in, heatmap NIfTI and JSON out), the
    region's heatmap placed back into an empty frame. Only the DICOM header is read with the app's reader."""
    import json
    from types import SimpleNamespace

    import nibabel as nib

    from monai_ultraad.cli import main
    from monai_ultraad.dicom.reader import read_ultrasound

    source = read_ultrasound(study / "uclm.dcm")
    rgb = np.asarray(Image.open(data_dir / "bus_uclm" / "images" / "ALWI_000.jpg").convert("RGB"))
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = study_region(h, w)  # inclusive bounds, as written into the study
    work = tmp_path_factory.mktemp("expected")
    Image.fromarray(rgb[y0:y1 + 1, x0:x1 + 1]).save(work / "region.png")
    main(["predict", "--checkpoint", str(checkpoint), "--images", str(work / "region.png"), "--output_dir",
          str(work / "out"), "--allow_random_init", "--progress", "False", "--device", "cpu"])
    record = json.loads((work / "out" / "region.json").read_text())
    region_map = np.asarray(nib.load(work / "out" / "region_heatmap.nii.gz").dataobj, np.float32).squeeze()
    if region_map.shape != (y1 + 1 - y0, x1 + 1 - x0):
        region_map = region_map.T  # NIfTI stores (x, y)
    heatmap = np.zeros((h, w), np.float32)
    heatmap[y0:y1 + 1, x0:x1 + 1] = region_map
    payload = engine.read_checkpoint(checkpoint)
    result = SimpleNamespace(heatmap=heatmap, class_probs=record["class_probabilities"],
                             anomaly_score=record["anomaly_score"])
    return source, result, payload


def _same_mask(got: np.ndarray, heatmap: np.ndarray, threshold: float) -> None:
    """``got`` is ``heatmap >= threshold`` except, at most, where the two independent paths' float noise (1e-4)
    puts a pixel on the other side of the threshold."""
    differ = got.astype(bool) != (heatmap >= threshold)
    assert not differ[np.abs(heatmap - threshold) > 1e-4].any()


def test_run_report_holds_one_prediction_record_per_analysed_frame(outputs, expected):
    out, _ = outputs
    _, expected, payload = expected
    report = json.loads((out / "ultraad_run.json").read_text())
    assert set(report["predictions"]) == set(report["processed"])
    for name, records in report["predictions"].items():
        for record in records:
            check_record(record)
            assert record["image"] == name and record["input_quality"] == report["input_quality"][name]
    assert [r["frame_number"] for r in report["predictions"]["OBXXXX1A_rle_2frame.dcm"]] == [1, 2]
    (uclm,) = report["predictions"]["uclm.dcm"]
    assert uclm["class_probabilities"] == pytest.approx(expected.class_probs, abs=1e-5)
    near = int((np.abs(expected.heatmap - payload["threshold"]) <= 1e-4).sum())  # the two paths' float noise
    assert abs(uclm["lesion_pixels"] - int((expected.heatmap >= payload["threshold"]).sum())) <= near
    assert uclm["model"]["checkpoint_sha256"] and uclm["random_weights"] and "RANDOM WEIGHTS" in uclm["warning"]


def test_seg_values_equal_the_model_output(outputs, expected):
    out, _ = outputs
    source, expected, payload = expected
    src_uid = source.dataset.SOPInstanceUID
    fractional = [pydicom.dcmread(p) for p in _by_kind(out, "seg_fractional")]
    seg = next(s for s in fractional if s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
               .ReferencedSOPInstanceUID == src_uid)
    assert seg.SegmentationType == "FRACTIONAL" and (seg.Rows, seg.Columns) == (source.rows, source.cols)
    values = seg.pixel_array.astype(np.float32) / float(seg.MaximumFractionalValue)
    np.testing.assert_allclose(values.reshape(expected.heatmap.shape), expected.heatmap, atol=1 / 255 + 1e-6)
    # the map lives inside the tissue region only (the app analysed the region, not the frame border)
    region = source.tissue_regions[0]
    outside = np.ones_like(expected.heatmap, bool)
    outside[region.y0:region.y1 + 1, region.x0:region.x1 + 1] = False
    assert values.reshape(expected.heatmap.shape)[outside].max() == 0
    binary = next(pydicom.dcmread(p) for p in _by_kind(out, "seg_binary")
                  if pydicom.dcmread(p).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                  .ReferencedSOPInstanceUID == src_uid)
    assert binary.SegmentationType == "BINARY"
    _same_mask(binary.pixel_array.reshape(expected.heatmap.shape), expected.heatmap, payload["threshold"])
    assert binary.StudyInstanceUID == source.dataset.StudyInstanceUID
    assert binary.SeriesInstanceUID != source.dataset.SeriesInstanceUID


def test_highdicom_reads_every_seg_and_the_viewer_seg_holds_the_binary_mask(outputs, expected):
    import highdicom as hd

    out, _ = outputs
    source, expected, payload = expected
    for path in sorted(out.glob("seg_*.dcm")):
        hd.seg.segread(path)  # PS3.3-conformant geometry: no Pixel Measures without a Frame of Reference
    viewer = [hd.seg.segread(p) for p in _by_kind(out, "seg_viewer")]
    seg = next(s for s in viewer if s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
               .ReferencedSOPInstanceUID == source.dataset.SOPInstanceUID)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.dataset.SOPInstanceUID], combine_segments=False)[0, ..., 0]
    _same_mask(got, expected.heatmap, payload["threshold"])
    region = source.tissue_regions[0]
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx(region.pixel_spacing_mm)


def test_sr_reports_the_model_probabilities(outputs, expected):
    import highdicom as hd

    out, _ = outputs
    source, expected, _ = expected
    reports = [hd.sr.srread(p) for p in _by_kind(out, "sr")]
    sr = next(r for r in reports if any(e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID ==
                                        source.dataset.SOPInstanceUID
                                        for s in r.CurrentRequestedProcedureEvidenceSequence
                                        for e in s.ReferencedSeriesSequence))
    values = {}
    for item in sr.ContentSequence:
        _collect_numbers(item, values)
    meanings = {"normal": "normal", "benign": "benign", "malignant": "probability of cancer"}  # DCM 111047
    for name, prob in expected.class_probs.items():
        assert any(abs(v - prob) < 1e-4 for k, v in values.items() if meanings[name] in k.lower()), (name, values)
    assert "RANDOM WEIGHTS" in str(sr)


def _collect_numbers(item, values: dict) -> None:
    if getattr(item, "ValueType", "") == "NUM":
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        values[name] = float(item.MeasuredValueSequence[0].NumericValue)
    for child in getattr(item, "ContentSequence", []):
        _collect_numbers(child, values)


def test_environment_variables_like_a_map_and_existing_outputs_are_skipped(outputs, checkpoint, tmp_path):
    out, _ = outputs
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(next(out.glob("seg_binary_*.dcm")), study / "old_seg.dcm")  # a SEG already in the folder
    shutil.copy(next(out.glob("sr_*.dcm")), study / "old_sr.dcm")
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"
    shutil.copy(data / "pydicom-data" / "US1_UNCR.dcm", study / "US1_UNCR.dcm")
    result = run_app(study, tmp_path / "out", checkpoint, env_paths=True)
    report = json.loads((tmp_path / "out" / "ultraad_run.json").read_text())
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["processed"] == ["US1_UNCR.dcm"] and not report["failed"]
    assert {s["file"] for s in report["skipped"]} == {"old_seg.dcm", "old_sr.dcm"}


def test_cine_every_nth_frame(checkpoint, data_dir, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / "fo-dicom" / "DIRW0007.dcm", study / "cine.dcm")  # 65 frames, JPEG baseline
    result = run_app(study, tmp_path / "out", checkpoint, "--frame-step", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    seg = pydicom.dcmread(next((tmp_path / "out").glob("seg_binary_*.dcm")))
    frames = [int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
              for f in seg.PerFrameFunctionalGroupsSequence]
    assert frames == [1, 17, 33, 49, 65]


def _uids(path: Path) -> list[tuple[str, str]]:
    """Every UID in a DICOM file (keyword and value, file meta and nested sequences included), in file order."""
    ds = pydicom.dcmread(path)
    found: list[tuple[str, str]] = []

    def walk(dataset) -> None:
        for element in dataset:
            if element.VR == "UI":
                found.append((element.keyword, str(element.value)))
            elif element.VR == "SQ":
                for item in element.value:
                    walk(item)

    walk(ds.file_meta)
    walk(ds)
    return found


def test_deterministic_uids_reproduce_the_same_files(study, checkpoint, outputs, tmp_path):
    out, _ = outputs
    run_app(study, tmp_path, checkpoint)
    names = sorted(p.name for p in out.glob("*.dcm"))
    assert sorted(p.name for p in tmp_path.glob("*.dcm")) == names and names
    for name in names:  # not only the file names: every UID inside (instance, series, references) is the same
        first, again = _uids(out / name), _uids(tmp_path / name)
        assert again == first, name
        assert dict(first)["SOPInstanceUID"] in name


def test_bad_model_path_fails_clearly(study, tmp_path):
    result = run_app(study, tmp_path / "out", tmp_path / "missing-model")
    assert result.returncode == 2
    text = result.stdout + result.stderr
    assert "missing-model" in text and ("No such file" in text or "model path not found" in text)
    assert not list((tmp_path / "out").glob("*.dcm"))


def test_model_folder_without_checkpoint_fails_clearly(study, tmp_path):
    (tmp_path / "models").mkdir()
    result = run_app(study, tmp_path / "out", tmp_path / "models")
    assert result.returncode == 2 and "no model.pt in model folder" in result.stderr
    assert not list((tmp_path / "out").glob("*.dcm"))


def test_bad_option_value_fails_clearly(study, checkpoint, tmp_path):
    result = run_app(study, tmp_path / "out", checkpoint, "--frame-step", "many")
    assert result.returncode == 2 and "--frame-step" in result.stderr
    assert not (tmp_path / "out").exists()
