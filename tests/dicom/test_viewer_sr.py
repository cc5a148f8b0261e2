"""The viewer report (monai_ultraad.dicom.viewer_sr): a lesion outline OHIF can draw, read back with highdicom and
checked with dciodvfy. (OHIF itself: tests/viewers/test_ohif.py.)"""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon
from PIL import Image

from monai_ultraad.dicom.synthetic import wrap_as_ultrasound
from monai_ultraad.dicom.viewer_sr import lesion_outline, write_viewer_report
from monai_ultraad.dicom.writers import AlgorithmInfo, FramePrediction, UIDFactory


def _algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(version="0.1.0", backbone="UltraAD-Tiny-ViT", weights_id="random",
                         checkpoint_sha256="cd" * 32, random_weights=True)


def test_outline_encloses_the_largest_part_and_nothing_for_an_empty_mask():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True  # largest part
    mask[30:33, 50:52] = True  # a small other part, left out
    outline = lesion_outline(mask)
    assert np.array_equal(outline[0], outline[-1])  # closed
    polygon = Polygon(outline)
    rows, cols = np.nonzero(mask[:20])
    assert polygon.contains_points(np.stack([cols + 0.5, rows + 0.5], axis=1)).all()  # pixel centres inside
    assert not polygon.contains_point((51.0, 31.5))
    line = np.zeros((5, 5), bool)
    line[2, 1:4] = True  # one row: no 2D hull, its bounding box
    assert lesion_outline(line) is not None
    assert lesion_outline(np.zeros((4, 4), bool)) is None


@pytest.mark.realdata
def test_report_references_the_source_frame_and_validates(data_dir, tmp_path):
    rgb = np.asarray(Image.open(data_dir / "bus_uclm" / "images" / "ALWI_000.jpg").convert("RGB"))
    mask = np.asarray(Image.open(data_dir / "bus_uclm" / "masks" / "ALWI_000.png").convert("L")) > 127
    path = wrap_as_ultrasound(rgb, tmp_path / "us.dcm", frames=np.stack([rgb, rgb]))
    source = pydicom.dcmread(path)
    heat = np.where(mask, 0.9, 0.1).astype(np.float32)
    preds = [FramePrediction(1, heat, {"normal": 0.1, "benign": 0.2, "malignant": 0.7}, 0.9),
             FramePrediction(2, np.zeros_like(heat), {"normal": 0.8, "benign": 0.1, "malignant": 0.1}, 0.1)]
    report = write_viewer_report(source, preds, 0.5, tmp_path, _algorithm(), UIDFactory("sr-viewer"))
    sr = hd.sr.srread(report)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1  # frame 2 has no lesion
    region = groups[0].roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    reference = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and int(reference.ReferencedFrameNumber) == 1
    assert groups[0].finding_type.value == "108369006"
    classes = [e.value.value for e in groups[0].get_qualitative_evaluations() if e.name.value == "PRED-CLASS"]
    assert classes == ["363346000"]  # malignant, the most likely class
    rows, cols = np.nonzero(mask)
    assert Polygon(region.value).contains_points(np.stack([cols + 0.5, rows + 0.5], axis=1)).mean() > 0.95
    assert write_viewer_report(source, preds[1:], 0.5, tmp_path, _algorithm(), UIDFactory("x")) is None
    if shutil.which("dciodvfy"):
        log = subprocess.run(["dciodvfy", str(report)], capture_output=True, text=True).stderr
        assert not [line for line in log.splitlines() if line.startswith("Error")], log
