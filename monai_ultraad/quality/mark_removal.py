"""Optional removal of detected calliper / annotation marks before inference.

Two ways, both local to the detected glyph pixels (grown by ``margin`` px, since JPEG smears a 1-px stroke):

- ``"inpaint"``: biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``) fills the glyph from the
  surrounding speckle's smooth continuation;
- ``"mask"``: each glyph pixel takes the median of its 7 x 7 neighbourhood's unmarked pixels (a cheap, blunt fill).

Nothing else in the image changes. Whether it helps is measured, not assumed: ``python -m benchmarks.mark_removal``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi

METHODS = ("inpaint", "mask")


def remove_marks(image: np.ndarray, marks: np.ndarray, method: str = "inpaint", margin: int = 1) -> np.ndarray:
    """``image`` (rows, cols, 3) with the pixels of ``marks`` (rows, cols) bool filled in; same dtype as ``image``.

    Raises:
        ValueError: unknown ``method`` or ``marks`` of another size than the image.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    image = np.asarray(image)
    marks = np.asarray(marks, bool)
    if marks.shape != image.shape[:2]:
        raise ValueError(f"marks mask {marks.shape} does not match the image {image.shape[:2]}")
    if not marks.any():
        return image.copy()
    region = ndi.binary_dilation(marks, iterations=margin) if margin else marks
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    work = image.astype(np.float64) / scale
    if method == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        filled = inpaint_biharmonic(work, region, channel_axis=-1 if work.ndim == 3 else None)
    else:
        filled = _median_fill(work if work.ndim == 3 else work[..., None], region)
        filled = filled if work.ndim == 3 else filled[..., 0]
    out = work.copy()
    out[region] = np.clip(filled[region], 0.0, 1.0)
    return (out * scale).round().astype(image.dtype) if image.dtype == np.uint8 else out.astype(image.dtype)


def _median_fill(work: np.ndarray, region: np.ndarray, half: int = 3) -> np.ndarray:
    """Each ``region`` pixel of (rows, cols, C) ``work`` -> median of the unmarked pixels of its 7 x 7 window."""
    keep = np.where(region[..., None], np.nan, work)
    padded = np.pad(keep, ((half, half), (half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * half + 1, 2 * half + 1), axis=(0, 1))
    ys, xs = np.nonzero(region)
    patches = windows[ys, xs].reshape(len(ys), work.shape[2], -1)  # (N, C, 49)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-marked window gives NaN: filled below
        local = np.nanmedian(patches, axis=-1)
    fallback = np.nanmedian(keep.reshape(-1, work.shape[2]), axis=0)
    local = np.where(np.isnan(local), fallback[None], local)
    out = work.copy()
    out[ys, xs] = local
    return out


__all__ = ["METHODS", "remove_marks"]
