"""Colour flow / power Doppler and elastography overlays inside the B-mode region.

Evidence, in three explainable steps:

1. colour pixels: chroma relative to the image's own tint (:mod:`.tint`) above ``CHROMA_MIN``; the scanner's uniform
   tint has chroma near 0 however blue or sepia it is;
2. filled, textured areas only: a morphological opening with a 3 x 3 square removes strokes 1-2 px wide, so
   calliper crosses, dotted lines and coloured text (which :mod:`.marks` reports) do not count; components touching
   the window's border (icons, body markers, colour bars) and flat-coloured components (user-interface graphics: a
   colour map varies) are set aside;
3. score = per-mille of the analysed area covered by what remains; flagged at ``>= DEFAULT_THRESHOLD``.

``details`` gives the hue mix of the overlay: mostly red + blue is the velocity map of colour flow, red-orange-yellow alone
is power Doppler, a spread over many hues (blue-green-yellow-red) is typical of elastography.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .detection import Detection, component_boxes
from .tint import as_rgb255, frame_furniture, tint_chroma

#: Chroma (distance from the tint line, 0-255 RGB units) above which a pixel is colour-mapped. B-mode tissue of
#: BUS-UCLM stays below 20 at its 99.9th percentile; Doppler pixels are at 60-130.
CHROMA_MIN = 40.0
#: Flag threshold on the score (per-mille of the analysed area), chosen on the threshold patients of bus_uclm by
#: ``python -m benchmarks.quality`` (max F1); see README "Input quality gate".
DEFAULT_THRESHOLD = 0.18
UNIT = "per-mille of the analysed area covered by filled colour-map areas"
#: Colour components flatter than this (mean per-channel std, 0-255 units) are user-interface graphics. BUS-UCLM's
#: Doppler components vary by 4-70; lossless DICOM icons by 0-4.
FLAT_STD_MAX = 3.0


def _hue_mix(rgb: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Fractions of the overlay pixels by hue: red-yellow (0-65 deg), green, cyan-blue, magenta."""
    from skimage.color import rgb2hsv

    if not mask.any():
        return {}
    hue = rgb2hsv(np.clip(rgb[mask][None] / 255.0, 0, 1))[0, :, 0] * 360.0
    bins = {"red_yellow": (hue < 65) | (hue >= 330), "green": (hue >= 65) & (hue < 165),
            "cyan_blue": (hue >= 165) & (hue < 270), "magenta": (hue >= 270) & (hue < 330)}
    return {k: round(float(v.mean()), 3) for k, v in bins.items()}


def _kind(mix: dict[str, float]) -> str:
    if not mix:
        return "none"
    if mix["red_yellow"] + mix["cyan_blue"] >= 0.8 and min(mix["red_yellow"], mix["cyan_blue"]) >= 0.05:
        return "colour flow (red/blue velocity map)"
    if mix["red_yellow"] + mix["magenta"] >= 0.8:
        return "power Doppler (red-orange-yellow)"
    return "multi-hue colour map (elastography or other)"


def detect_colour_overlay(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                          offset: tuple[int, int] = (0, 0), full_shape: tuple[int, int] | None = None) -> Detection:
    """Detect a colour Doppler / elastography overlay in an RGB image of the analysed tissue region.

    Args:
        image: (rows, cols, 3) RGB of the analysed window (uint8, uint16 or float in [0, 1]).
        threshold: flag threshold on the score.
        offset: (top, left) of the window in the full frame; boxes and mask are returned in the full frame.
        full_shape: (rows, cols) of the full frame (default: the window's shape).
    """
    rgb = as_rgb255(image)
    chroma, _ = tint_chroma(rgb)
    colour = chroma > CHROMA_MIN
    colour &= ~frame_furniture(colour)
    filled = ndi.binary_opening(colour, structure=np.ones((3, 3), bool))
    labels, n = ndi.label(filled, structure=np.ones((3, 3), bool))
    keep = _textured(rgb, labels, n)
    filled = np.isin(labels, keep) if len(keep) < n else filled
    score = 1000.0 * filled.sum() / max(filled.size, 1)
    mix = _hue_mix(rgb, filled)
    mask = _place(filled, offset, full_shape)
    return Detection("colour_overlay", score >= threshold, float(score), float(threshold), UNIT, mask,
                     component_boxes(labels, keep, offset), {"hues": mix, "kind": _kind(mix)} if mix else {})


def _textured(rgb: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
    """Components whose colour varies (std over their pixels >= ``FLAT_STD_MAX``): a flow or strain map encodes a
    quantity in its colours; a flat-filled one is a user-interface graphic (icon, marker, cursor)."""
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    std = np.mean([ndi.standard_deviation(rgb[..., c], labels, index) for c in range(3)], axis=0)
    return [int(i) for i, s in zip(index, np.atleast_1d(std)) if s >= FLAT_STD_MAX]


def _place(local: np.ndarray, offset: tuple[int, int], full_shape: tuple[int, int] | None) -> np.ndarray:
    if full_shape is None or (tuple(full_shape) == local.shape and offset == (0, 0)):
        return local
    out = np.zeros(full_shape, bool)
    top, left = offset
    out[top : top + local.shape[0], left : left + local.shape[1]] = local
    return out


__all__ = ["CHROMA_MIN", "DEFAULT_THRESHOLD", "detect_colour_overlay"]
