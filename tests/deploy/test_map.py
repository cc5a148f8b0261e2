"""The deploy app inside its MAP: the same behaviour as the host app, checked with ``podman run`` on real files.

Runs only where the MAP image has been built (``deploy_app/map/package_map.sh``) and podman exists; everywhere else
(CI builds no MAP) every test here is skipped with the reason. Image: ``$ULTRAAD_MAP_IMAGE`` (default the name
package_map.sh prints). The container runs as uid 1000 with the study mounted read-only, the tiny checkpoint
(random weights, ``ULTRAAD_ALLOW_RANDOM_INIT=1``) mounted as its model folder, and the output folder as a bind mount
(or a small tmpfs): what is checked is what a PACS watcher on that folder would see, and that the report, the exit
code and the objects are the ones the host app produces from the same study.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pydicom
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.map]

REPO = Path(__file__).resolve().parents[2]

IMAGE = os.environ.get("ULTRAAD_MAP_IMAGE", "localhost/ultraad-map-x64-workstation-dgpu-linux-amd64:0.1.0")
IN, OUT, MODELS = "/var/holoscan/input", "/var/holoscan/output", "/opt/holoscan/models"
APP_UID = 1000  # user holoscan in the image
MAX_FRAMES = "4"

#: The real files of the mixed study: name in the study -> file in ../shared/data/dicom.
REAL = {
    "cine/DIRW0007.dcm": "fo-dicom/DIRW0007.dcm",  # 65-frame JPEG baseline cine
    "single/US1_UNCR.dcm": "pydicom-data/US1_UNCR.dcm",  # one RGB frame
    "single/OBXXXX1A_2frame.dcm": "pydicom-data/OBXXXX1A_2frame.dcm",  # palette, 2 frames, single-frame class
    "jxl/will-jxl.dcm": "dcm4che/will-jxl.dcm",  # JPEG XL, 27 frames
    "color-pl.dcm": "pydicom-data/color-pl.dcm",  # retired SOP class, UID root 999.999, no Patient ID
}


def _podman_ready() -> str | None:
    if not shutil.which("podman"):
        return "podman not installed (the MAP is built by deploy_app/map/package_map.sh, not in CI)"
    done = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, check=False)
    if done.returncode != 0:
        return f"MAP image {IMAGE} not built (deploy_app/map/package_map.sh; or set ULTRAAD_MAP_IMAGE)"
    stale = _stale_files()
    if stale:  # an image of other code would test that code (and fail the comparison with this host app)
        return f"MAP image {IMAGE} is not of this checkout ({len(stale)} file(s) differ, e.g. {stale[0]}): rebuild " \
            "it with deploy_app/map/package_map.sh"
    return None


_IMAGE_SOURCES = """
import hashlib, importlib.util, json, pathlib
roots = {"deploy_app": pathlib.Path("/opt/holoscan/app"),
         "monai_ultraad": pathlib.Path(importlib.util.find_spec("monai_ultraad").origin).parent}
print(json.dumps({f"{name}/{p.relative_to(root).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
                  for name, root in roots.items() for p in sorted(root.rglob("*.py"))}))
"""


def _stale_files() -> list[str]:
    """The Python files of this checkout's app and package that differ from (or are missing in) the image's."""
    done = subprocess.run(["podman", "run", "--rm", "--entrypoint", "python3", IMAGE, "-c", _IMAGE_SOURCES],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        return [f"(cannot read the image's sources: {done.stderr.strip()[-300:]})"]
    image = json.loads(done.stdout.strip().splitlines()[-1])
    here = {f"{name}/{p.relative_to(REPO / name).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
            for name in ("deploy_app", "monai_ultraad") for p in sorted((REPO / name).rglob("*.py"))
            if not (name == "deploy_app" and p.relative_to(REPO / name).parts[0] == "map")}  # not in the image
    return sorted(k for k in here.keys() | image.keys() if here.get(k) != image.get(k))


@pytest.fixture(scope="module", autouse=True)
def _need_map():
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)


def _open_to_app(path: Path, writable: bool = False) -> Path:
    """Let the container's user read (and write) ``path``: pytest's folders are root-only (0700)."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    if writable:
        try:
            os.chown(path, APP_UID, APP_UID)
        except PermissionError:
            path.chmod(0o777)
    return path


def _podman_args(study: Path, models: Path, output: list[str], name: str | None = None) -> list[str]:
    args = ["podman", "run", "--rm", "-v", f"{study}:{IN}:ro", "-v", f"{models}:{MODELS}:ro", *output,
            "-e", "ULTRAAD_ALLOW_RANDOM_INIT=1", "-e", f"ULTRAAD_MAX_FRAMES={MAX_FRAMES}",
            "-e", "ULTRAAD_DETERMINISTIC_UIDS=test", "-e", "PYTHONWARNINGS=ignore"]
    if name:
        args += ["--name", name]
    return [*args, IMAGE]


def _podman_run(study: Path, models: Path, output: list[str], timeout: int = 900):
    start = time.monotonic()
    result = subprocess.run(_podman_args(study, models, output), capture_output=True, text=True, timeout=timeout,
                            check=False)
    print(f"podman run ({' '.join(output)}): exit {result.returncode} in {time.monotonic() - start:.0f} s")
    return result


def _summary(result) -> dict:
    """The JSON counts the app prints last on stdout."""
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("map_models")
    shutil.copy(checkpoint, folder / "model.pt")
    return _open_to_app(folder)


@pytest.fixture(scope="module")
def mixed_study(data_dir, tmp_path_factory) -> Path:
    """Real files (a cine, single frames, JPEG XL, a 999.999-rooted retired-class file) and what a study folder also
    holds: a README, a file cut short, a copy whose Study Instance UID is a path."""
    corpus = data_dir / "dicom"
    study = tmp_path_factory.mktemp("map_study")
    for name, source in REAL.items():
        (study / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / source, study / name)
    (study / "README.txt").write_text("exported from the scanner\n")
    data = (corpus / "pydicom-data/US1_UNCI.dcm").read_bytes()
    (study / "truncated.dcm").write_bytes(data[: len(data) // 2])
    bad = pydicom.dcmread(corpus / "pydicom-data/US1_J2KR.dcm")
    bad.StudyInstanceUID = "../../etc/x"
    bad.save_as(study / "bad_uid.dcm")
    return _open_to_app(study)


@pytest.fixture(scope="module")
def map_run(mixed_study, models, tmp_path_factory):
    out = _open_to_app(tmp_path_factory.mktemp("map_out"), writable=True)
    start = time.monotonic()
    result = _podman_run(mixed_study, models, ["-v", f"{out}:{OUT}"])
    seconds = time.monotonic() - start
    report_path = out / "ultraad_run.json"
    assert report_path.is_file(), result.stderr[-3000:]
    return out, result, json.loads(report_path.read_text()), seconds


@pytest.fixture(scope="module")
def host_run(mixed_study, checkpoint, run_deploy_app, tmp_path_factory):
    out = tmp_path_factory.mktemp("host_out")
    result = run_deploy_app(mixed_study, out, checkpoint, "--max-frames", MAX_FRAMES)
    return out, result, json.loads((out / "ultraad_run.json").read_text())


def _kind(name: str) -> str:
    return name.split("_1.")[0].split("_2.")[0] + (".nrrd" if name.endswith(".nrrd") else "")


def _is_whole_set(files: list[str]) -> bool:
    kinds = [_kind(f) for f in files]
    core = all(kinds.count(k) == 1 for k in ("seg_fractional", "seg_binary", "sr", "overlay"))
    viewer = kinds.count("seg_viewer") >= 1 and kinds.count("seg_viewer") == kinds.count("seg_viewer.nrrd")
    return core and viewer and len(kinds) == 4 + 2 * kinds.count("seg_viewer") + kinds.count("sr_viewer")


def test_map_mixed_study_outcomes(map_run):
    _, result, report, seconds = map_run
    print(f"MAP mixed study: exit {result.returncode}, {seconds:.0f} s,",
          {k: len(v) for k, v in report.items() if isinstance(v, (list, dict))})
    for name in report["processed"]:
        print(f"  processed {name}: {len(report['outputs_by_source'][name])} objects")
    for outcome in ("failed", "skipped"):
        for entry in report[outcome]:
            print(f"  {outcome} {entry['file']}: {entry['reason']}")
    assert result.returncode == 1, result.stderr[-3000:]  # some image failed (documented: 1)
    assert report["exit_code"] == 1 and _summary(result)["exit_code"] == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert sorted(report["processed"]) == sorted(n for n in REAL)  # JPEG XL and the 999.999 file included
    failed = {f["file"]: f["reason"] for f in report["failed"]}
    assert set(failed) == {"truncated.dcm", "bad_uid.dcm"}
    assert "truncated" in failed["truncated.dcm"]
    assert failed["bad_uid.dcm"] == "refused: StudyInstanceUID is not a UID (only digits and dots are allowed)"
    assert "/etc/x" not in result.stdout + result.stderr  # named, never echoed
    assert [(s["file"], s["reason"].startswith("not a DICOM file")) for s in report["skipped"]] == [
        ("README.txt", True)]
    assert not report["not_started"] and "stopped_by" not in report


def test_map_outputs_are_whole_sets_and_nothing_else_is_left(map_run):
    out, _, report, _ = map_run
    assert sorted(report["outputs_by_source"]) == sorted(report["processed"])
    for source, files in report["outputs_by_source"].items():
        assert _is_whole_set(files), (source, files)
    objects = sorted(p.name for p in out.iterdir() if p.name.endswith((".dcm", ".seg.nrrd")))
    assert objects == sorted(report["outputs"])
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*objects, "ultraad_run.json"])  # no temp file where a watcher looks
    assert not (out / ".ultraad-staging").exists()
    assert all(p.stat().st_uid == APP_UID for p in out.iterdir() if not p.name.startswith("."))  # written in the MAP


def _numbers(sr) -> list[float]:
    """Every numeric value of an SR's content tree, in document order (probabilities, scores, threshold, area)."""
    values = []

    def walk(items):
        for item in items:
            if "MeasuredValueSequence" in item:
                values.append(float(item.MeasuredValueSequence[0].NumericValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return values


def test_map_matches_the_host_app(map_run, host_run):
    """Same study and options: the MAP's report is the host app's, and so are its heatmaps and numbers (the UIDs
    differ: in test mode they are derived from the source's path, which is /var/holoscan/input/... in the MAP)."""
    map_out, map_result, map_report, _ = map_run
    host_out, host_result, host_report = host_run
    assert map_result.returncode == host_result.returncode
    for key in ("processed", "skipped", "failed", "not_started", "warnings", "refused", "input_quality"):
        assert map_report[key] == host_report[key], key
    assert map_report["outputs_by_source"].keys() == host_report["outputs_by_source"].keys()
    for source, files in map_report["outputs_by_source"].items():
        host_files = host_report["outputs_by_source"][source]
        assert sorted(map(_kind, files)) == sorted(map(_kind, host_files)), source

        def first(names, kind):
            return next(n for n in names if _kind(n) == kind)

        heatmap = pydicom.dcmread(map_out / first(files, "seg_fractional")).pixel_array
        assert (heatmap == pydicom.dcmread(host_out / first(host_files, "seg_fractional")).pixel_array).all(), source
        numbers = _numbers(pydicom.dcmread(map_out / first(files, "sr")))
        assert numbers and numbers == _numbers(pydicom.dcmread(host_out / first(host_files, "sr"))), source


def test_map_objects_pass_dciodvfy(map_run, mixed_study):
    if not shutil.which("dciodvfy"):
        pytest.skip("dicom3tools not installed (apt-get install dicom3tools)")
    out, _, report, _ = map_run
    totals, unexplained, excused = {"objects": 0, "errors": 0, "warnings": 0, "excused": 0}, [], set()
    for source, files in report["outputs_by_source"].items():
        header = pydicom.dcmread(mixed_study / source, stop_before_pixels=True)
        uids = {str(header.get(k)) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
        for name in (f for f in files if f.endswith(".dcm")):
            lines = subprocess.run(["dciodvfy", str(out / name)], capture_output=True, text=True,
                                   check=False).stderr.splitlines()
            errors = [line for line in lines if line.startswith("Error")]
            totals["objects"] += 1
            totals["errors"] += len(errors)
            totals["warnings"] += sum(line.startswith("Warning") for line in lines)
            # allowed: a source UID that is itself invalid (999.999 root) referenced as it is, and the summary line
            uid_errors = [e for e in errors if any(u in e for u in uids)]
            totals["excused"] += len(uid_errors)
            excused.update(e.split(" - ")[1].split(" <")[0].split(" -")[0] for e in uid_errors)
            rest = [e for e in errors if e not in uid_errors and not (uid_errors and e.startswith(
                "Error - Dicom dataset contains invalid data values"))]
            unexplained += [f"{name} ({source}): {e}" for e in rest]
    print("dciodvfy over the MAP's objects:", totals, "excused (invalid source UIDs):", sorted(excused))
    assert totals["objects"] == sum(f.endswith(".dcm") for f in report["outputs"])
    assert not unexplained, unexplained[:20]


def _wait(condition, process, timeout: float, what: str) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"the MAP ended before {what}: {process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_map_second_run_refused_and_podman_stop_ends_cleanly(data_dir, models, tmp_path):
    """A MAP run holds the output folder: a second ``podman run`` into it stops at once (exit 2, one line);
    ``podman stop`` (SIGTERM) ends the first after the source under way, with a report (exit 1)."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / "pydicom-data/color3d_jpeg_baseline.dcm", study / "a_cine.dcm")  # 120 frames
    shutil.copy(data_dir / "dicom" / "pydicom-data/US1_UNCR.dcm", study / "b.dcm")
    shutil.copy(data_dir / "dicom" / "pydicom-data/US1_J2KR.dcm", study / "c.dcm")
    _open_to_app(study)
    out = tmp_path / "out"
    out.mkdir()
    _open_to_app(out, writable=True)
    name = f"ultraad-map-test-{uuid.uuid4().hex[:8]}"
    args = _podman_args(study, models, ["-v", f"{out}:{OUT}"], name=name)
    args[args.index(f"ULTRAAD_MAX_FRAMES={MAX_FRAMES}")] = "ULTRAAD_MAX_FRAMES=40"
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".ultraad.lock"
        _wait(lambda: lock.is_file() and lock.read_text().strip(), first, 300, "it took the output folder")
        second = _podman_run(study, models, ["-v", f"{out}:{OUT}"], timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"another UltraAD run (pid {lock.read_text().strip()}) is writing into {OUT}" in second.stderr
        assert "no run report written" in second.stderr and "Traceback" not in second.stderr
        _wait(lambda: list((out / ".ultraad-staging").glob("source-*/*.dcm")), first, 600, "it staged an object")
        start = time.monotonic()
        stop = subprocess.run(["podman", "stop", "-t", "300", name], capture_output=True, text=True, check=False)
        stdout, stderr = first.communicate(timeout=360)
        print(f"podman stop: exit {stop.returncode}, the MAP ended {time.monotonic() - start:.0f} s after it, "
              f"exit {first.returncode}")
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, stderr[-3000:]  # not 137: the app ended itself, podman did not have to kill it
    assert "SIGTERM received" in stderr and "Traceback" not in stderr
    report = json.loads((out / "ultraad_run.json").read_text())
    print(f"after podman stop: processed {report['processed']}, not_started {report['not_started']}, "
          f"{len(report['outputs'])} objects")
    assert report["stopped_by"] == "SIGTERM" and report["exit_code"] == 1 and not report["failed"]
    assert report["processed"][0] == "a_cine.dcm" and report["not_started"]
    assert report["processed"] + report["not_started"] == ["a_cine.dcm", "b.dcm", "c.dcm"]
    assert all(_is_whole_set(f) for f in report["outputs_by_source"].values())
    objects = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != "ultraad_run.json")
    assert objects == sorted(report["outputs"])
    assert not (out / ".ultraad-staging").exists()
    assert json.loads(stdout.strip().splitlines()[-1])["not_started"] == len(report["not_started"])


def test_map_output_folder_unusable_fails_fast(data_dir, models, tmp_path):
    """Read-only output mount, and a 2 MiB tmpfs for a study whose cine needs more: exit 2 and one line, before
    the model is loaded."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(data_dir / "dicom" / "fo-dicom/DIRW0007.dcm", study / "cine.dcm")
    _open_to_app(study)
    out = tmp_path / "out"
    out.mkdir()
    _open_to_app(out, writable=True)
    read_only = _podman_run(study, models, ["-v", f"{out}:{OUT}:ro"], timeout=300)
    assert read_only.returncode == 2, read_only.stderr[-3000:]
    assert f"output folder {OUT} cannot be used: Read-only file system" in read_only.stderr
    assert "RANDOM WEIGHTS" not in read_only.stderr and "Traceback" not in read_only.stderr
    assert _summary(read_only)["exit_code"] == 2 and not list(out.iterdir())
    small = _podman_run(study, models, ["--tmpfs", f"{OUT}:rw,size=2m,U"], timeout=300)
    assert small.returncode == 2, small.stderr[-3000:]
    assert f"output folder {OUT} has" in small.stderr and "MiB free, the largest source needs about" in small.stderr
    assert "RANDOM WEIGHTS" not in small.stderr and "Traceback" not in small.stderr
    assert _summary(small)["exit_code"] == 2
