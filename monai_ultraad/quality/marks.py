"""Calliper and annotation marks: small, sparse, high-contrast glyphs (crosses, dotted-line dots, arrows, text).

Evidence, in three explainable steps:

1. glyph pixels: coloured strokes (chroma relative to the image's tint above ``STROKE_CHROMA_MIN``: BUS-UCLM's
   callipers are yellow/green) or white strokes (a white top-hat with a disk of radius 2 above
   ``STROKE_CONTRAST_MIN`` on a pixel at least ``STROKE_WHITE_MIN`` bright: BUS-BRA's crosses are near-white), outside
   filled colour-map areas (the Doppler detector's business) and outside components touching the window's border
   (icons, body markers, scale bars);
2. glyphs: connected components whose bounding box is 4-15 px on both sides (at 384 px for the longer image side,
   scaled with the image), at most twice as long as wide and at most 60 % filled: the shape of a cross, an arrow
   head or a letter, not of a speckle grain (filled) nor of a tissue edge (long and thin);
3. score = the number of glyphs; flagged at ``>= DEFAULT_THRESHOLD``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .colour_overlay import CHROMA_MIN as OVERLAY_CHROMA_MIN
from .detection import Detection, component_boxes
from .tint import as_rgb255, frame_furniture, tint_chroma

STROKE_CHROMA_MIN = 12.0
STROKE_CONTRAST_MIN = 60.0
STROKE_WHITE_MIN = 230.0
GLYPH_MIN_SIDE, GLYPH_MAX_SIDE, GLYPH_MAX_FILL = 4, 15, 0.6
#: Longer / shorter side of a glyph's box at most: crosses and letters are compact; tissue edges with a colour
#: fringe (BUS-UCLM's JPEG chroma) are 4 px high and 10-20 px long.
GLYPH_MAX_ASPECT = 2.0
#: The geometry above is for images whose longer side is this many pixels.
REFERENCE_SIDE = 384
#: Flag threshold (number of glyphs), chosen on the threshold patients of bus_uclm by ``python -m benchmarks.quality``
#: (max F1); see README "Input quality gate".
DEFAULT_THRESHOLD = 1.0
UNIT = "number of calliper/annotation glyphs"


def glyph_pixels(rgb: np.ndarray) -> np.ndarray:
    """Step 1: candidate stroke pixels of an (rows, cols, 3) 0-255 RGB window."""
    from skimage.morphology import disk, white_tophat

    chroma, bright = tint_chroma(rgb)
    filled_colour = ndi.binary_opening(chroma > OVERLAY_CHROMA_MIN, structure=np.ones((3, 3), bool))
    contrast = white_tophat(bright, disk(2))
    strokes = (chroma > STROKE_CHROMA_MIN) | ((contrast > STROKE_CONTRAST_MIN) & (bright >= STROKE_WHITE_MIN))
    furniture = frame_furniture((chroma > STROKE_CHROMA_MIN / 1.5) | (bright >= STROKE_WHITE_MIN))
    return strokes & ~furniture & ~ndi.binary_dilation(filled_colour, iterations=2)


def detect_marks(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD, offset: tuple[int, int] = (0, 0),
                 full_shape: tuple[int, int] | None = None) -> Detection:
    """Detect calliper / annotation marks in an RGB image of the analysed tissue region.

    Args:
        image: (rows, cols, 3) RGB of the analysed window (uint8, uint16 or float in [0, 1]).
        threshold: flag threshold on the glyph count.
        offset: (top, left) of the window in the full frame; boxes and mask are returned in the full frame.
        full_shape: (rows, cols) of the full frame (default: the window's shape).
    """
    rgb = as_rgb255(image)
    candidates = glyph_pixels(rgb)
    scale = max(rgb.shape[:2]) / REFERENCE_SIDE
    lo, hi = max(round(GLYPH_MIN_SIDE * scale), 3), max(round(GLYPH_MAX_SIDE * scale), 6)
    labels, n = ndi.label(candidates, structure=np.ones((3, 3), bool))
    keep = []
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if lo <= h <= hi and lo <= w <= hi and areas[i] <= GLYPH_MAX_FILL * h * w \
                    and max(h, w) <= GLYPH_MAX_ASPECT * min(h, w):
                keep.append(i)
    local = np.isin(labels, keep) if keep else np.zeros(candidates.shape, bool)
    mask = local
    if full_shape is not None and (tuple(full_shape) != local.shape or offset != (0, 0)):
        mask = np.zeros(full_shape, bool)
        mask[offset[0] : offset[0] + local.shape[0], offset[1] : offset[1] + local.shape[1]] = local
    score = float(len(keep))
    return Detection("marks", score >= threshold, score, float(threshold), UNIT, mask,
                     component_boxes(labels, keep, offset))


__all__ = ["DEFAULT_THRESHOLD", "detect_marks", "glyph_pixels"]
