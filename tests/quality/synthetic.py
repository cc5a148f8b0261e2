"""Images the quality tests make: tinted B-mode speckle, with a drawn calliper cross or a pasted colour-flow patch."""

from __future__ import annotations

import numpy as np

#: BUS-UCLM's grey-ramp direction (a bluish tint).
UCLM_TINT = np.array([0.542, 0.565, 0.622])


def bmode(rows: int = 272, cols: int = 384, seed: int = 0, tint: np.ndarray = UCLM_TINT) -> np.ndarray:
    """Tinted speckle-like B-mode (uint8 RGB): Rayleigh speckle, smoothed, a brighter band, times the tint."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    speckle = ndi.gaussian_filter(rng.rayleigh(1.0, (rows, cols)), 1.0)
    grey = 60 + 60 * speckle / speckle.mean()
    grey[rows // 2 : rows // 2 + 10] += 60  # a bright fascia
    rgb = grey[..., None] * (tint / tint.max())[None, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_cross(image: np.ndarray, centre: tuple[int, int], colour=(210, 220, 60), arm: int = 4) -> np.ndarray:
    """A calliper '+' with 1-px arms (yellow by default, as on BUS-UCLM's scanner)."""
    out = image.copy()
    y, x = centre
    out[y - arm : y + arm + 1, x] = colour
    out[y, x - arm : x + arm + 1] = colour
    return out


def paste_colour_flow(image: np.ndarray, top_left: tuple[int, int], size: tuple[int, int] = (14, 20)) -> np.ndarray:
    """A colour-flow patch: a red and a blue blob (velocity map: faster, brighter, at the vessel's centre)."""
    out = image.copy()
    y, x = top_left
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    r_red = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 4) / (w / 4)) ** 2
    r_blue = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - 3 * w / 4) / (w / 4)) ** 2
    patch = out[y : y + h, x : x + w]
    for r, colour in ((r_red, np.array([230, 40, 20])), (r_blue, np.array([30, 70, 240]))):
        inside = r <= 1
        speed = 1.0 - 0.6 * r[inside]  # 1 at the centre, 0.4 at the wall
        patch[inside] = (speed[:, None] * colour).astype(np.uint8)
    return out
