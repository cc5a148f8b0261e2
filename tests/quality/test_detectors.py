"""The detectors on images the tests make and on real images of both datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from monai_ultraad.quality import assess_image, detect_colour_overlay, detect_marks
from monai_ultraad.quality.tint import dominant_tint, tint_chroma

from .synthetic import UCLM_TINT, bmode, draw_cross, paste_colour_flow


def _jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


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
    assert detect_colour_overlay(image).score == 0  # 1-px strokes do not survive the opening ...
    assert detect_colour_overlay(_jpeg(image)).score == 0  # ... even once JPEG has smeared and textured them


def test_white_cross_on_grey_image():
    """BUS-BRA style: a near-white cross on an untinted grey image."""
    image = draw_cross(bmode(seed=4, tint=np.ones(3)), (150, 100), colour=(250, 250, 250))
    assert detect_marks(image).flagged


def test_scanner_furniture_on_the_border_is_ignored():
    """Graphics touching the edge of the window (a scanner icon like BUS-UCLM's top-left one, a colour bar) are
    neither marks nor an overlay; the same graphics inside the window are."""
    def furnished(row: int, col: int) -> np.ndarray:
        image = bmode(seed=5)
        image = draw_cross(image, (row + 4, col + 4), colour=(230, 200, 40))  # a 9 x 9 yellow icon
        bar = np.linspace(40, 250, 60)[:, None, None] * np.array([1.0, 0.3, 0.1])  # a red ramp, textured
        image[row + 20 : row + 80, col : col + 8] = bar.astype(np.uint8)
        return image

    q = assess_image(furnished(0, 0))
    assert not q.flagged, q.to_dict()
    inside = assess_image(furnished(40, 60))
    assert inside.flags == ["colour_overlay", "marks"], inside.to_dict()


def test_colour_fringe_along_a_tissue_edge_is_not_a_mark():
    """JPEG colour fringes along bright tissue edges: two thin parallel strokes, 4 px high and 12 long."""
    image = bmode(seed=10)
    image[100, 200:212] = image[103, 200:212] = (200, 220, 120)  # a thin 4 x 12 ring
    image[100:104, 200] = image[100:104, 211] = (200, 220, 120)
    assert not detect_marks(image).flagged
    assert detect_marks(draw_cross(image, (150, 100))).flagged


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
    def load(path):
        return np.asarray(Image.open(path).convert("RGB"))

    doppler = assess_image(load(uclm / "ANFO_003.jpg"))  # labels.csv: doppler True
    assert doppler.detections["colour_overlay"].flagged
    marked = assess_image(load(uclm / "ALWI_000.jpg"))  # labels.csv: marks True, doppler False
    assert marked.detections["marks"].flagged and not marked.detections["colour_overlay"].flagged
    plain = assess_image(load(uclm / "ALWI_002.jpg"))  # labels.csv: neither
    assert not plain.detections["colour_overlay"].flagged
    with open(data_dir / "bus_uclm" / "labels.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
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
