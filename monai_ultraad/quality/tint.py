"""Colour relative to the scanner's tint.

Many scanners tint B-mode (BUS-UCLM's grey ramp is slightly blue: RGB direction about (0.54, 0.56, 0.62)), so plain
RGB saturation would call every pixel coloured. Echo pixels of a tinted B-mode image all lie on one line through
black, ``value * tint``; a colour map (Doppler, elastography) or a coloured glyph leaves that line. The chroma that
matters is therefore the distance of each pixel from the tint line, in 0-255 RGB units: 0 on plain B-mode whatever
the tint, tens on colour-map pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixels darker than this (RGB norm, 0-255 units) say nothing about the tint.
_TINT_MIN_NORM = 20.0


def as_rgb255(image: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) float32 in 0-255 from uint8/uint16 or float [0, 1] RGB (grey (rows, cols) replicated)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (rows, cols, 3) RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 257.0
    arr = arr.astype(np.float32)
    return arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr


def dominant_tint(rgb: np.ndarray) -> np.ndarray:
    """Unit RGB direction of the image's grey ramp: the median colour direction of its non-dark pixels.

    The median, not the mean: a colour overlay covers a minority of the tissue and must not pull the tint.
    """
    norm = np.linalg.norm(rgb, axis=-1)
    lit = norm > _TINT_MIN_NORM
    if lit.sum() < 16:
        return np.full(3, 1 / np.sqrt(3), np.float32)
    tint = np.median(rgb[lit] / norm[lit, None], axis=0)
    return (tint / np.linalg.norm(tint)).astype(np.float32)


def tint_chroma(rgb: np.ndarray, tint: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chroma, brightness): each pixel's distance from the tint line and its position along it (0-255 units)."""
    tint = dominant_tint(rgb) if tint is None else tint
    along = rgb @ tint
    chroma = np.linalg.norm(rgb - along[..., None] * tint, axis=-1)
    return chroma, along / np.sqrt(3.0)  # brightness on the grey scale: 255 for white


def frame_furniture(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Parts of ``mask`` connected to the window's border, grown by ``margin`` px.

    Scanner icons, body markers, colour bars and the edge of a cropped screen sit on the edge of the analysed
    window; colour flow and callipers sit inside it. Components touching the border are therefore set aside.
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = np.isin(labels, edge[edge > 0])
    return ndi.binary_dilation(touching, iterations=margin) if margin and touching.any() else touching


__all__ = ["as_rgb255", "dominant_tint", "frame_furniture", "tint_chroma"]
