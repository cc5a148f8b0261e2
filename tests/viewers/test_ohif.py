"""The deploy app's results in OHIF, in a real browser.

A BUS-UCLM image wrapped as ultrasound DICOM is processed by the deploy app; the source and every object it writes are
stored in Orthanc (Debian, DICOMweb plugin, loopback) by STOW-RS; OHIF 3.13 (the built viewer of the npm package
@ohif/app) is served same-origin by scripts/ohif_server.py and opened in Debian's Chromium, headless, driven by
Playwright, with SwiftShader WebGL. The test asserts on what the page renders: the study's series listed, the viewer
SEG loaded into the segmentation panel with its segment, and lesion pixels coloured in the viewport where there were
none before. Needs: chromium (/usr/bin/chromium), playwright (PyPI), the OHIF build ($ULTRAAD_OHIF_DIST or
.ohif/package/dist: `npm pack @ohif/app@3.13.2` unpacked), Orthanc; .ci/run installs them. Without them the test
is skipped with the reason (under CI=true it fails). ULTRAAD_SCREENSHOT_DIR=<folder> keeps the screenshot
(docs/images/ohif_seg.png is made that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "monailabel"))
sys.path.insert(0, str(REPO / "scripts"))
from monailabel_servers import Orthanc, http, missing

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OHIF_DIST = Path(os.environ.get("ULTRAAD_OHIF_DIST", REPO / ".ohif" / "package" / "dist"))
CHROMIUM_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWER_SEG_SERIES = 9005  # monai_ultraad.dicom.viewer_seg.write_viewer_segmentations' series number
VIEWER_SR_SERIES = 9006  # monai_ultraad.dicom.viewer_sr.write_viewer_report's
UCLM_IMAGE = "ALWI_000"


def _stow_rs(dicomweb: str, files: list[Path]) -> int:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    status, _, _ = http("POST", f"{dicomweb}/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    return status


@pytest.fixture(scope="module")
def processed_study(data_dir, tiny_backbone, synthetic_dataset, tmp_path_factory):
    """(source file, deploy-app output folder): one wrapped BUS-UCLM image with a calibrated tissue region."""
    from monai_ultraad import engine
    from monai_ultraad.data import make_fewshot_split, read_dataset
    from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

    root = tmp_path_factory.mktemp("ohif")
    items = read_dataset(synthetic_dataset)
    split = make_fewshot_split(items, k=2, seed=0)
    store = engine.build_store(tiny_backbone, cache_dir=None, progress=False)
    model = engine.build_model(tiny_backbone, seed=0)
    result = engine.fit(model, split.shots, split.validation, store, engine.TrainConfig(epochs=2), progress=False)
    checkpoint = root / "model.pt"
    engine.save_checkpoint(checkpoint, model, threshold=result.threshold, split=split.to_dict(), fit_result=result)
    rgb = np.asarray(Image.open(data_dir / "bus_uclm" / "images" / f"{UCLM_IMAGE}.jpg").convert("RGB"))
    (root / "study").mkdir()
    source = wrap_as_ultrasound(rgb, root / "study" / "us.dcm", with_region=True, pixel_spacing_mm=0.1,
                                patient_id="SYNTH-OHIF")
    out = root / "out"
    run = subprocess.run([sys.executable, str(REPO / "deploy_app"), "-i", str(root / "study"), "-o", str(out), "-m",
                          str(checkpoint), "--allow-random-init", "--deterministic-uids", "ohif"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    return source, out


def _reddish(png: bytes) -> np.ndarray:
    import io

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return (rgb[..., 0] > 140) & (rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)


def test_viewer_seg_displays_over_the_ultrasound_in_ohif(processed_study, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing("Debian's chromium is not installed (apt-get install chromium)")
    if not (OHIF_DIST / "index.html").is_file():
        missing(f"no OHIF build at {OHIF_DIST}: npm pack @ohif/app@3.13.2 and unpack it under .ohif/ (.ci/run does)")
    from ohif_server import OhifServer

    source_path, out = processed_study
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    viewer = sorted(out.glob("seg_viewer_*.dcm"))
    assert len(viewer) == 1
    lesion_pixels = int(np.count_nonzero(pydicom.dcmread(viewer[0]).pixel_array))
    assert lesion_pixels > 0, "the deterministic tiny model predicts no lesion: nothing to see"

    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        assert _stow_rs(orthanc.dicomweb, [source_path, *sorted(out.glob("*.dcm"))]) == 200
        with OhifServer(OHIF_DIST, orthanc.dicomweb) as ohif, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{ohif.url}/viewer?StudyInstanceUIDs={source.StudyInstanceUID}", timeout=120_000)
                # the study browser lists every series the app wrote (SEGs, SR) beside the image
                page.wait_for_selector(f"text=S:{VIEWER_SEG_SERIES}", timeout=120_000)
                for series in (9001, 9002, 9003, VIEWER_SR_SERIES):
                    assert page.get_by_text(f"S:{series}").count() >= 1, series
                page.wait_for_selector("canvas", timeout=60_000)
                _dismiss_tour(page)
                time.sleep(5)  # first image rendered (SwiftShader)
                viewport = page.locator(".viewport-wrapper, [data-cy='viewport-pane']").first
                before = _reddish(viewport.screenshot())

                page.get_by_text(f"S:{VIEWER_SEG_SERIES}").first.dblclick()
                page.wait_for_selector("text=Do you want to open this Segmentation?", timeout=60_000)
                time.sleep(3)
                preview = _reddish(viewport.screenshot())  # OHIF previews the SEG over the image before asking
                page.get_by_role("button", name="Yes").click()
                time.sleep(3)
                page.locator("[data-cy='panelSegmentation-btn']").first.click()  # open the segmentation panel
                panel = page.get_by_text("Lesion", exact=False)
                panel.first.wait_for(timeout=60_000)  # the segment, listed in the panel
                time.sleep(3)
                panel_text = page.locator("body").inner_text()
                shot = page.screenshot()
                after = _reddish(viewport.screenshot())
                (tmp_path / "ohif_seg.png").write_bytes(shot)
                keep = os.environ.get("ULTRAAD_SCREENSHOT_DIR")
                if keep:
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    (Path(keep) / "ohif_seg.png").write_bytes(shot)
                assert "Lesion" in panel_text
                assert before.sum() < 50, f"{before.sum()} red pixels before any SEG was loaded"
                assert preview.sum() > 200 and after.sum() > 200, (preview.sum(), after.sum())
                assert not [e for e in errors if "SpacingBetweenSlices" in e], errors

                # the viewer report: OHIF draws the lesion outline and writes the finding beside it
                page.get_by_text(f"S:{VIEWER_SR_SERIES}").first.dblclick()
                page.get_by_text("Anomaly score").first.wait_for(timeout=60_000)
                time.sleep(3)
                viewport_text = page.locator("body").inner_text()
                assert "image class:" in viewport_text and "Anomaly score" in viewport_text, viewport_text[-1500:]
                if keep:
                    (Path(keep) / "ohif_sr.png").write_bytes(page.screenshot())
                assert not [e for e in errors if "ReferencedSOPSequence" in e], errors
            finally:
                browser.close()
    finally:
        orthanc.stop()


def _dismiss_tour(page) -> None:
    """OHIF 3.13 opens a guided tour on first use; skip it so it does not cover the viewport."""
    skip = page.get_by_text("Skip all")
    try:
        skip.first.wait_for(timeout=10_000)
        skip.first.click()
    except Exception:  # noqa: BLE001 - no tour shown: nothing to dismiss
        pass
