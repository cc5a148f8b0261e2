"""The detectors on images the tests make and on real images of both datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from monai_ultraad.quality import assess_image, detect_colour_overlay, detect_marks
from monai_ultraad.quality.tint import dominant_tint, tint_chroma

from .synthetic import UCLM_TINT, bmode, draw_cross, paste_colour_flow


def test_tint_is_not_colour():
    """A strongly tinted plain B-mode image has chroma near 0 relative to its own tint (but not to grey)."""
    image = bmode().astype(np.float32)
    tint = dominant_tint(image)
    assert np.allclose(tint, UCLM_TINT / np.linalg.norm(UCLM_TINT), atol=0.02)
    chroma, _ = tint_chroma(image)
    assert np.percentile(chroma, 99.9) < 5
    grey = np.full(3, 1 / np.sqrt(3), np.float32)
    assert np.percentile(tint_chroma(image, grey)[0], 50) > 5  # naive saturation would call it coloured


def test_plain_bmode_fires_nothing():
    q = assess_image(bmode(seed=3))
    assert not q.flagged, q.to_dict()


def test_colour_flow_patch_is_found_where_pasted():
    image = paste_colour_flow(bmode(seed=1), (100, 200))
    d = detect_colour_overlay(image)
    assert d.flagged and d.score > 1.0
    assert d.details["kind"].startswith("colour flow")
    top, left, bottom, right = d.boxes[0]
    assert 98 <= top and bottom <= 116 and 198 <= left and right <= 222
    assert d.mask[107, 205] and not d.mask[:90].any()
    # the pasted patch is not a calliper glyph (filled, not a stroke)
    assert not detect_marks(image).flagged


def test_drawn_cross_is_a_mark_not_an_overlay():
    image = draw_cross(bmode(seed=2), (60, 150))
    marks = detect_marks(image)
    assert marks.flagged and marks.score == 1
    assert marks.boxes == [(56, 146, 65, 155)]
    assert not detect_colour_overlay(image).flagged  # 1-px strokes do not survive the opening


def test_white_cross_on_grey_image():
    """BUS-BRA style: a near-white cross on an untinted grey image."""
    image = draw_cross(bmode(seed=4, tint=np.ones(3)), (150, 100), colour=(250, 250, 250))
    assert detect_marks(image).flagged


def test_scanner_furniture_on_the_border_is_ignored():
    """A coloured icon touching the edge of the window (body marker, logo) is not a mark nor an overlay."""
    image = bmode(seed=5)
    image[-30:, -30:] = (150, 120, 190)
    image[-20, -25:-5] = (240, 240, 240)
    q = assess_image(image)
    assert not q.flagged, q.to_dict()


def test_windows_restrict_and_place_in_full_frame():
    """Only the analysed window is searched; boxes come back in full-frame coordinates."""
    frame = np.zeros((300, 420, 3), np.uint8)
    frame[20:292, 18:402] = paste_colour_flow(bmode(seed=6), (100, 200))
    frame[5:12, 5:60] = (0, 200, 0)  # a colour bar outside the window
    q = assess_image(frame, windows=[(20, 292, 18, 402)])
    d = q.detections["colour_overlay"]
    assert d.flagged and d.mask.shape == (300, 420)
    assert d.boxes[0][0] >= 118 and d.boxes[0][1] >= 218
    assert q.to_dict()["flags"] == ["colour_overlay"]


@pytest.mark.realdata
def test_real_images_both_datasets(data_dir):
    """Known BUS-UCLM images (a Doppler one, a calliper one, a plain one) and a BUS-BRA image with crosses."""
    uclm = data_dir / "bus_uclm" / "images"
    load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    doppler = assess_image(load(uclm / "ANFO_003.jpg"))  # labels.csv: doppler True
    assert doppler.detections["colour_overlay"].flagged
    marked = assess_image(load(uclm / "ALWI_000.jpg"))  # labels.csv: marks True, doppler False
    assert marked.detections["marks"].flagged and not marked.detections["colour_overlay"].flagged
    plain = assess_image(load(uclm / "ALWI_002.jpg"))  # labels.csv: neither
    assert not plain.detections["colour_overlay"].flagged
    rows = {r["image"]: r for r in csv.DictReader(open(data_dir / "bus_uclm" / "labels.csv"))}
    assert rows["images/ANFO_003.jpg"]["doppler"] == "True" and rows["images/ALWI_002.jpg"]["doppler"] == "False"
    # BUS-BRA is greyscale: its tint is grey and nothing there is a colour map
    bra = assess_image(load(data_dir / "bus_bra" / "images" / "bus_0001-l.jpg"))
    assert not bra.detections["colour_overlay"].flagged


def test_flat_coloured_icon_inside_the_region_is_not_a_colour_map():
    """A user-interface graphic (a flat green marker, as on lossless DICOM screens) is not a flow map."""
    image = bmode(seed=9)
    yy, xx = np.mgrid[:272, :384]
    image[(yy - 100) ** 2 + (xx - 200) ** 2 <= 36] = (40, 200, 60)
    assert not detect_colour_overlay(image).flagged
    textured = paste_colour_flow(image, (150, 250))
    assert detect_colour_overlay(textured).flagged
