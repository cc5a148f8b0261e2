"""The deploy app under faults: hostile inputs, a full or read-only output folder, kill -9, SIGTERM, two runs at once.

Every case runs the real app as a subprocess. The invariants checked each time, as a PACS watcher on the output
folder would see it: every visible ``*.dcm`` belongs to a source listed as processed, with all of its objects; no
temporary file outside the hidden staging folder; each file has one outcome; no traceback.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CINE = "fo-dicom/DIRW0007.dcm"  # 65 frames, JPEG baseline
SINGLE = "pydicom-data/US1_UNCR.dcm"  # 480 x 640 RGB


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (96, 128)) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return wrap_as_ultrasound(rgb, path)


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _objects(out: Path) -> list[str]:
    """The published objects: DICOM files and the viewer SEGs' Slicer .seg.nrrd files."""
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".dcm", ".seg.nrrd")))


def _is_whole_set(files: list[str]) -> bool:
    """A source's whole set: the two source-faithful SEGs, the SR and the overlay, one viewer SEG per analysed frame
    with its .seg.nrrd, and the viewer SR when a lesion was outlined."""
    kinds = [f.split("_1.")[0] + (".nrrd" if f.endswith(".nrrd") else "") for f in files]
    core = all(kinds.count(k) == 1 for k in ("seg_fractional", "seg_binary", "sr", "overlay"))
    viewer = kinds.count("seg_viewer") >= 1 and kinds.count("seg_viewer") == kinds.count("seg_viewer.nrrd")
    return core and viewer and kinds.count("sr_viewer") <= 1 and len(kinds) == 4 + 2 * kinds.count("seg_viewer") \
        + kinds.count("sr_viewer")


def _check_consistent(out: Path, result=None) -> dict | None:
    """The PACS-watcher invariants; returns the report when there is one."""
    report_path = out / "ultraad_run.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    objects = _objects(out)
    assert not [n for n in _visible(out) if n not in objects and n != "ultraad_run.json"], _visible(out)
    if report is not None:
        assert sorted(report["outputs"]) == objects  # every visible object is in the report ...
        for files in report["outputs_by_source"].values():
            assert _is_whole_set(files), files  # ... with the whole set of its source
        decided = report["processed"] + [f["file"] for f in report["failed"] + report["skipped"]] \
            + report["not_started"]
        assert len(decided) == len(set(decided))  # one outcome per file
    if result is not None:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return report


# -- hostile inputs --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(data_dir, checkpoint, run_deploy_app, tmp_path_factory):
    study = tmp_path_factory.mktemp("hostile")
    good = _image(study / "good.dcm")
    (study / "sub").mkdir()
    shutil.copy(good, study / "sub" / "good.dcm")  # the same name in another folder
    (study / "empty.dcm").write_bytes(b"")
    (study / "README.txt").write_text("study exported by ...")
    data = good.read_bytes()
    (study / "truncated.dcm").write_bytes(data[: len(data) * 2 // 3])
    ds = pydicom.dcmread(good)
    ds.Rows = ds.Rows * 2  # the header claims twice the pixels the file holds
    ds.save_as(study / "lying.dcm")
    cine = pydicom.dcmread(data_dir / "dicom" / "pydicom-data" / "color3d_jpeg_baseline.dcm")
    cine.NumberOfFrames = 60000  # encapsulated: the fragments are all there, the claimed size is absurd
    cine.save_as(study / "huge.dcm")
    for name, keyword, value in (("path_uid.dcm", "StudyInstanceUID", "../../etc/x"),
                                 ("abs_uid.dcm", "SOPInstanceUID", "/tmp/evil"),
                                 ("long_uid.dcm", "SeriesInstanceUID", "1." + "2" * 70)):
        bad = pydicom.dcmread(good)
        setattr(bad, keyword, value)
        bad.save_as(study / name)
    zero = pydicom.dcmread(good)
    zero.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.01"  # a leading zero: accepted with a warning
    zero.file_meta.MediaStorageSOPInstanceUID = zero.SOPInstanceUID
    zero.save_as(study / "leading_zero.dcm")
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.FileSetID = "STUDY"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(study / "DICOMDIR", enforce_file_format=True)
    out = tmp_path_factory.mktemp("hostile_out")
    result = run_deploy_app(study, out, checkpoint)
    return out, result, _check_consistent(out, result)


def test_hostile_inputs_each_get_one_clear_outcome(hostile_run):
    out, result, report = hostile_run
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(report["processed"]) == ["good.dcm", "leading_zero.dcm", "sub/good.dcm"]
    failed = {f["file"]: f["reason"] for f in report["failed"]}
    assert set(failed) == {"truncated.dcm", "lying.dcm", "huge.dcm", "path_uid.dcm", "abs_uid.dcm", "long_uid.dcm"}
    assert "truncated" in failed["truncated.dcm"]
    assert "Pixel Data holds" in failed["lying.dcm"]
    assert "60000 frame(s)" in failed["huge.dcm"] and "GiB" in failed["huge.dcm"]
    assert failed["path_uid.dcm"] == "refused: StudyInstanceUID is not a UID (only digits and dots are allowed)"
    assert failed["abs_uid.dcm"] == "refused: SOPInstanceUID is not a UID (only digits and dots are allowed)"
    assert "SeriesInstanceUID is 72 characters long" in failed["long_uid.dcm"]
    assert all("\n" not in r for r in failed.values())
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"empty.dcm", "README.txt", "DICOMDIR"}
    assert skipped["empty.dcm"].startswith("empty file") and skipped["DICOMDIR"].startswith("DICOMDIR")
    assert report["warnings"] == [{"file": "leading_zero.dcm", "warning": "SOPInstanceUID has a component with a "
                                   "leading zero (PS3.5 9.1); referenced as it is"}]
    assert sorted(report["outputs_by_source"]) == sorted(report["processed"])  # objects of the processed only
    assert len(_objects(out)) == sum(len(f) for f in report["outputs_by_source"].values())
    assert "/etc/x" not in result.stdout + result.stderr  # invalid UIDs are named, never echoed
    sr = pydicom.dcmread(out / next(f for f in report["outputs_by_source"]["leading_zero.dcm"] if f.startswith("sr_")))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == "1.2.826.0.1.3680043.8.498.01"  # referenced as it is


# -- the output folder -----------------------------------------------------------------------------------------------


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        _mount_tmpfs(folder, options)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_read_only_output_folder_fails_before_the_model_runs(data_dir, checkpoint, run_deploy_app, tmpfs, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / SINGLE, study / "single.dcm")
    out = tmpfs("ro", "ro,size=1m")
    result = run_deploy_app(study, out, checkpoint)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"output folder {out}" in result.stderr and "Read-only file system" in result.stderr
    assert "RANDOM WEIGHTS" not in result.stderr  # the model was never loaded
    assert "Traceback" not in result.stderr
    assert _summary(result)["exit_code"] == 2 and "no run report written" in result.stderr


def test_too_little_space_fails_before_the_model_runs(data_dir, checkpoint, run_deploy_app, tmpfs, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / CINE, study / "cine.dcm")
    out = tmpfs("small", "size=2m")
    result = run_deploy_app(study, out, checkpoint)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "MiB free, the largest source needs about" in result.stderr
    assert "RANDOM WEIGHTS" not in result.stderr and "Traceback" not in result.stderr
    assert _summary(result)["exit_code"] == 2
    assert _visible(out) == ["ultraad_run.json"]  # the report (a few hundred bytes) says why, nothing else
    report = json.loads((out / "ultraad_run.json").read_text())
    assert "MiB free" in report["aborted"] and not report["processed"] and not report["outputs"]


def test_disk_full_during_the_run_leaves_whole_sets_only(data_dir, checkpoint, run_deploy_app, tmpfs, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    for i in range(12):
        shutil.copy(data_dir / "dicom" / SINGLE, study / f"img{i:02d}.dcm")
    # passes the start check (largest source ~5.1 MiB with its staging files, + 8 MiB spare) and holds the objects
    # (~1.3 MB per source) of about 10 sources, not of all 12
    out = tmpfs("full", "size=14m")
    result = run_deploy_app(study, out, checkpoint)
    assert result.returncode in (1, 2), result.stderr[-3000:]
    summary = _summary(result)
    assert summary["failed"] >= 1 and summary["processed"] >= 1
    report = _check_consistent(out, result)
    if report is None:  # the disk was too full even for the report: the summary still says it all
        assert "run report not written" in result.stderr
        kinds = [n.split("_1.")[0] for n in _objects(out)]
        assert kinds.count("sr") == kinds.count("overlay") == summary["processed"]  # whole sets only
    else:
        assert any("No space left on device" in f["reason"] for f in report["failed"])
    staging = out / ".ultraad-staging"
    assert not staging.exists() or not any(staging.iterdir())


# -- signals and concurrent runs -------------------------------------------------------------------------------------


def _wait_for_staged_object(out: Path, process, timeout: float = 300) -> None:
    """Until a source has an object in the staging folder (its outputs are being written)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if list((out / ".ultraad-staging").glob("source-*/*.dcm")):
            return
        if process.poll() is not None:
            pytest.fail(f"the app ended before writing: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    pytest.fail("nothing was staged in time")


def test_kill_9_during_a_cine_leaves_nothing_visible_and_the_next_run_tidies(data_dir, checkpoint, run_deploy_app,
                                                                          tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / CINE, study / "cine.dcm")
    out = tmp_path / "out"
    process = run_deploy_app.popen(study, out, checkpoint, "--max-frames", "16")
    _wait_for_staged_object(out, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert _visible(out) == []  # no SEG without its SR, no temp file where a watcher looks
    assert list((out / ".ultraad-staging").glob("source-*/*"))  # what was under way stayed hidden
    small = tmp_path / "small"
    small.mkdir()
    _image(small / "one.dcm")
    result = run_deploy_app(small, out, checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed stale staging" in result.stderr
    report = _check_consistent(out, result)
    assert report["processed"] == ["one.dcm"] and _is_whole_set(_objects(out))
    assert not (out / ".ultraad-staging").exists()


def test_sigterm_finishes_the_current_source_then_reports(data_dir, checkpoint, run_deploy_app, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / CINE, study / "a_cine.dcm")
    _image(study / "b.dcm", 1)
    _image(study / "c.dcm", 2)
    out = tmp_path / "out"
    process = run_deploy_app.popen(study, out, checkpoint, "--max-frames", "16")
    _wait_for_staged_object(out, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert "SIGTERM received" in stderr and "Traceback" not in stderr
    report = _check_consistent(out)
    # the cine (under way when the signal came) is finished; what had not started stays so (b.dcm may have been
    # started in the instant between the cine's publication and the signal)
    assert report["processed"][0] == "a_cine.dcm" and report["not_started"] and not report["failed"]
    assert report["processed"] + report["not_started"] == ["a_cine.dcm", "b.dcm", "c.dcm"]
    assert report["stopped_by"] == "SIGTERM" and report["exit_code"] == 1
    assert len(_objects(out)) == sum(len(f) for f in report["outputs_by_source"].values())
    assert all(_is_whole_set(f) for f in report["outputs_by_source"].values())
    assert not (out / ".ultraad-staging").exists()
    assert json.loads(stdout.strip().splitlines()[-1])["not_started"] == len(report["not_started"])


def test_a_second_run_into_the_same_folder_is_refused(data_dir, checkpoint, run_deploy_app, tmp_path):
    """Two runs started together into one folder: one takes the lock, the other stops at once (exit 2) naming it."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / CINE, study / "cine.dcm")
    out = tmp_path / "out"
    runs = [run_deploy_app.popen(study, out, checkpoint, "--max-frames", "16") for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in runs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [e[-2000:] for _, _, e in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    _, _, refused = next(r for r in results if r[0].returncode == 2)
    assert f"another UltraAD run (pid {winner.pid}) is writing into {out}" in refused
    assert "Traceback" not in refused and "no run report written" in refused
    report = _check_consistent(out)
    assert report["processed"] == ["cine.dcm"] and _is_whole_set(_objects(out))  # one run's set, one report
