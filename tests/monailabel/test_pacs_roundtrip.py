"""PACS round trip: Orthanc (Debian, DICOMweb plugin) on loopback holds the real US files of ../shared/data/dicom
and BUS-UCLM images wrapped as US DICOM. The MONAI Label server reads its studies over DICOMweb; labels are saved and
trained on; the deploy app's SEG, SR and overlay for a study pulled from Orthanc are stored back with STOW-RS and
found by a QIDO-RS query. Faults: every real file either infers or gets a clear 4xx (never a 500), 20 concurrent
infer requests, and Orthanc stopped mid-run (clear 503, the server stays up, no label is lost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from monailabel_servers import REPO, MonaiLabelServer, Orthanc, http, label_file, uclm_rows

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SOP_SEG, SOP_SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"  # SEG, Comprehensive 3D SR


@pytest.fixture(scope="module")
def pacs(data_dir, tmp_path_factory):
    """Orthanc loaded with the 29 real US files and 4 wrapped BUS-UCLM images (2 normal, 2 benign; one study each)."""
    import pydicom
    from PIL import Image

    from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

    root = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(root)
    try:  # stopped even when loading fails
        real, refused = {}, {}
        for path in sorted((data_dir / "dicom").rglob("*.dcm")):
            name = path.relative_to(data_dir / "dicom").as_posix()
            status, answer = orthanc.upload(path)
            if status != 200:
                refused[name] = answer.get("Details") or answer.get("Message")
                continue
            real[name] = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        print(f"\nOrthanc refused {len(refused)} of the real files: {refused}")
        assert len(real) >= 25
        # the real JPEG 2000 picture as a series of its own (the US1_* files share one series with uncompressed
        # copies, which the app refuses as several objects): new series and SOP UIDs, pixel data untouched
        j2k = pydicom.dcmread(data_dir / "dicom" / "pydicom-data" / "US1_J2KI.dcm")
        assert j2k.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000
        j2k.SeriesInstanceUID, j2k.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        j2k.file_meta.MediaStorageSOPInstanceUID = j2k.SOPInstanceUID
        j2k.save_as(root / "j2k.dcm")
        assert orthanc.upload(root / "j2k.dcm")[0] == 200
        real["j2k-own-series"] = str(j2k.SeriesInstanceUID)
        wrapped = []
        for i, row in enumerate(r for r in uclm_rows(data_dir, 2) if r["label"] != "malignant"):
            rgb = np.asarray(Image.open(data_dir / "bus_uclm" / row["image"]).convert("RGB"))
            path = wrap_as_ultrasound(rgb, root / "wrapped" / f"w{i}.dcm", patient_id=f"SYNTH{i}", with_region=False,
                                      lossy_compression_method="ISO_10918_1")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert orthanc.upload(path)[0] == 200
            wrapped.append({"series": str(ds.SeriesInstanceUID), "study": str(ds.StudyInstanceUID), "row": row,
                            "file": path, "label": label_file(data_dir, row, root / f"w{i}.nii.gz")})
        yield orthanc, real, wrapped, root
    finally:
        orthanc.stop()


@pytest.fixture(autouse=True)
def orthanc_alive(request):
    """A test after which Orthanc has died on its own fails with Orthanc's log, and Orthanc is started again (on
    the same storage) so that one crash is reported once, not as a failure of every later test."""
    yield
    if "pacs" not in request.fixturenames:
        return
    orthanc = request.getfixturevalue("pacs")[0]
    why = orthanc.died()
    if why:
        orthanc.start()
        pytest.fail(why)


@pytest.fixture(scope="module")
def server(pacs):
    orthanc, _, _, root = pacs
    srv = MonaiLabelServer(orthanc.dicomweb, root / "ml")
    yield srv
    srv.stop()


def test_server_lists_the_pacs_ultrasound_series(server, pacs):
    _, real, wrapped, _ = pacs
    status, body, _ = server.get("/datastore/")
    assert status == 200
    assert json.loads(body)["total"] == len(set(real.values()) | {w["series"] for w in wrapped})
    assert server.get("/datastore/?output=all")[0] == 200


def test_every_real_us_file_infers_or_is_refused_clearly(server, pacs):
    """What MONAI Label's DICOM -> NIfTI conversion makes of real ultrasound, through the whole server.

    Several corpus files share one series (the same picture in other transfer syntaxes); Orthanc keeps the first
    object stored, so outcomes are per series.
    """
    _, real, _, _ = pacs
    by_series: dict[str, list[str]] = {}
    for name, series in sorted(real.items()):
        by_series.setdefault(series, []).append(name)
    outcomes = {}
    for series, names in by_series.items():
        if "dcm4che/US-RGB-8-esopecho.dcm" in names:
            continue  # kept uncached for the Orthanc-stopped test
        status, body, _ = server.infer(series, output="json")
        assert status in (200, 422, 502), f"{names}: HTTP {status} {body[:300]!r}"
        detail = json.loads(body) if status == 200 else json.loads(body)["detail"]
        assert status == 200 or series in detail or "frames" in detail
        for name in names:
            outcomes[name] = (status, detail)
    # Orthanc cannot send JPEG XL over WADO-RS (502); were it sent, GDCM could not decode it (422). The deploy app
    # decodes it (monai_ultraad/dicom/jpegxl.py, tests/dicom/test_reader.py).
    assert outcomes["dcm4che/will-jxl.dcm"][0] in (422, 502)
    # The US1_* series holds several objects (the same picture in other transfer syntaxes), which the app refuses
    # with a 422 naming the count (its JPEG 2000 object alone: test_jpeg_2000_is_sent_as_stored_and_decoded_by_the_app).
    status, detail = outcomes["pydicom-data/US1_J2KI.dcm"]
    assert status == 200 or (status == 422 and "objects" in detail), outcomes["pydicom-data/US1_J2KI.dcm"]
    assert outcomes["dcm4che/US-PAL-8-10x-echo.dcm"][0] == 422  # 10-frame cine loop
    assert "frames" in outcomes["dcm4che/US-PAL-8-10x-echo.dcm"][1]
    for ok in ("dcm4che/US-RGB-8-epicard.dcm", "dcm4che/YBR_422.dcm"):
        assert outcomes[ok][0] == 200, (ok, outcomes[ok])
        assert outcomes[ok][1]["random_weights"] is True
    assert sum(status == 200 for status, _ in outcomes.values()) >= 8
    print("\nDICOMweb infer outcomes:", json.dumps({n: s for n, (s, _) in outcomes.items()}, indent=1))


def test_jpeg_2000_is_sent_as_stored_and_decoded_by_the_app(server, pacs, data_dir):
    """The app asks for objects in their stored transfer syntax (WADO-RS ``transfer-syntax=*``), so the PACS need
    not transcode JPEG 2000 (Debian's Orthanc 1.10 cannot without its GDCM plugin); GDCM in the server decodes it."""
    import pydicom

    orthanc, real, _, _ = pacs
    ds = pydicom.dcmread(data_dir / "dicom" / "pydicom-data" / "US1_J2KI.dcm", stop_before_pixels=True)
    url = (f"{orthanc.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}")
    status, body, _ = http("GET", url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200, (status, body[:200])
    assert pydicom.uid.JPEG2000.encode() in body  # the stored JPEG 2000 object, not a transcoded copy
    assert len(body) < int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)  # compressed pixels sent

    status, body, _ = server.infer(real["j2k-own-series"], output="json")
    assert status == 200, body[:300]
    assert json.loads(body)["random_weights"] is True


def test_label_train_deploy_and_store_results_back(server, pacs, tmp_path):
    orthanc, _, wrapped, _ = pacs
    for w in wrapped:
        status, body, _ = server.infer(w["series"])
        assert status == 200, body[:300]
        status, body, _ = server.put_label(w["series"], w["label"], {"label_info": [{"name": "lesion", "idx": 1}]})
        assert status == 200, body
        info = json.loads(server.get(f"/datastore/label/info?label={w['series']}&tag=final")[1])
        assert info["class"] == w["row"]["label"] and "stored" in info["pacs_seg"]
    task = server.train({"shots": 1, "epochs": 3, "seed": 0})
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    checkpoint = server.model_dir / "ultraad.pt"

    # the deploy app on a study pulled from the PACS, with the checkpoint the MONAI Label app trained
    target = next(w for w in wrapped if w["row"]["label"] == "benign")
    study_dir, out_dir = tmp_path / "study", tmp_path / "out"
    study_dir.mkdir()
    status, body, _ = http("POST", f"{orthanc.url}/tools/find",
                           data=json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": target["study"]}}).encode())
    for instance in json.loads(body):
        status, content, _ = http("GET", f"{orthanc.url}/instances/{instance}/file")
        (study_dir / f"{instance}.dcm").write_bytes(content)
    run = subprocess.run([sys.executable, str(REPO / "deploy_app"), "-i", str(study_dir), "-o", str(out_dir),
                          "-m", str(checkpoint), "--allow-random-init"], check=False, capture_output=True, text=True, timeout=600,
                         cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr[-2000:]
    outputs = sorted(out_dir.glob("*.dcm"))
    assert {p.name.split("_")[0] for p in outputs} == {"seg", "sr", "overlay"}

    status, body = stow_rs(orthanc.dicomweb, outputs)
    assert status == 200, body[:500]
    status, body, _ = http("GET", f"{orthanc.dicomweb}/studies/{target['study']}/instances",
                           headers={"Accept": "application/dicom+json"})
    found = {(i["00080016"]["Value"][0], i["00080018"]["Value"][0]) for i in json.loads(body)}
    import pydicom

    written = {(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in map(pydicom.dcmread, outputs)}
    assert written <= found  # every SEG, SR and overlay is in the source study in the PACS
    classes = {c for c, _ in found}
    assert SOP_SEG in classes and SOP_SR in classes
    for modality in ("SEG", "SR"):  # as a viewer finds them: QIDO-RS series query by modality
        status, body, _ = http("GET", f"{orthanc.dicomweb}/studies/{target['study']}/series?Modality={modality}",
                               headers={"Accept": "application/dicom+json"})
        assert status == 200 and len(json.loads(body)) >= 1, modality


def test_20_concurrent_infer_requests(server, pacs):
    series = [w["series"] for w in pacs[2]] * 5
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda s: server.infer(s, output="json", timeout=240), series))
    assert [a[0] for a in answers] == [200] * 20
    assert server.get("/info/")[0] == 200 and server.proc.poll() is None


def test_orthanc_stopped_mid_run(server, pacs):
    orthanc, real, wrapped, _ = pacs
    orthanc.stop()
    cached = wrapped[0]["series"]
    status, body, _ = server.infer(cached, output="json")
    assert status == 200  # images already fetched are still served
    status, body, _ = server.infer(real["dcm4che/US-RGB-8-esopecho.dcm"], output="json")
    assert status == 503 and "PACS" in json.loads(body)["detail"]
    status, body, _ = server.put_label(cached, wrapped[0]["label"], {"class": wrapped[0]["row"]["label"]})
    assert status == 200, body  # kept in the cache; the SEG push failed and says so
    info = json.loads(server.get(f"/datastore/label/info?label={cached}&tag=final")[1])
    assert info["pacs_seg"]["stored"] is False
    status, body, _ = server.get("/datastore/?output=train")
    assert status == 200 and len(json.loads(body)) == len(wrapped)  # no label lost
    assert server.get("/info/")[0] == 200 and server.proc.poll() is None


def stow_rs(dicomweb: str, files: list[Path]) -> tuple[int, bytes]:
    """Store DICOM files with STOW-RS (multipart/related; type=application/dicom)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    status, answer, _ = http("POST", f"{dicomweb}/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    return status, answer
