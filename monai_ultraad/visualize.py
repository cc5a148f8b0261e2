"""Pictures for people: heatmap overlays with captions and ROC curve plots.

Rendering never touches matplotlib's global state: colormaps come from ``matplotlib.colormaps``
and figures are drawn with an explicit Agg canvas (``Figure`` + ``FigureCanvasAgg``) instead of
``pyplot``, so this module works headless and does not change the backend of a user's session.
Every file is encoded in memory first and then written with
:func:`monai_ultraad.io_utils.atomic_write_bytes`, so a crash never leaves a truncated PNG.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from monai_ultraad.arrays import as_numpy
from monai_ultraad.io_utils import atomic_write_bytes

__all__ = [
    "SHORT_RANDOM_WEIGHTS_WARNING",
    "iter_overlay_frames",
    "overlay_frames",
    "overlay_heatmap",
    "plot_prediction_rocs",
    "plot_roc_curves",
    "render_overlay",
    "save_overlay_png",
]

#: Stamped in red on every picture produced without pretrained weights (the long form is
#: :data:`monai_ultraad.constants.RANDOM_WEIGHTS_WARNING`, too long for an image caption).
SHORT_RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS - NOT FOR CLINICAL USE"

_RED = (230, 25, 25)
_CAPTION_BG = (32, 32, 32)
_CAPTION_FG = (240, 240, 240)


def _to_rgb_uint8(image: Any) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 / bool / float in [0, 1] -> uint8 (H, W, 3)."""
    img = as_numpy(image)
    if img.ndim == 3 and img.shape[2] in (1, 3, 4):
        img = img[..., :3]
        if img.shape[2] == 1:
            img = img[..., 0]
    if img.ndim == 2:  # grayscale ultrasound
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):
        if img.size and (img.min() < 0 or img.max() > 255):
            raise ValueError(f"integer image must lie in [0, 255], got range [{img.min()}, {img.max()}]")
        return img.astype(np.uint8)
    img = np.nan_to_num(img.astype(np.float64), nan=0.0)
    if img.size and img.max() > 2.0:
        # Float images straight from a loader are often on a 0-255 scale; clipping them to [0, 1]
        # would give a white picture, so such images are rescaled instead. The margin above 1
        # keeps [0, 1] images with a little interpolation overshoot on the [0, 1] path.
        img = img / 255.0
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _as_heatmap(heatmap: Any, shape: tuple[int, int]) -> np.ndarray:
    h = as_numpy(heatmap).astype(np.float64)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.shape != shape:
        raise ValueError(f"heatmap shape {h.shape} does not match image shape {shape}; resize it first")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap contains NaN or infinite values")
    return np.clip(h, 0.0, 1.0)


def _boundary(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` that touch the background, thickened to ``thickness`` pixels."""
    if not mask.any():
        return mask
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1) & mask
    return edge


def overlay_heatmap(
    image_rgb: Any,
    heatmap: Any,
    alpha: float = 0.45,
    colormap: str = "jet",
    contour_mask: Any | None = None,
    threshold: float | None = None,
    gt_color: tuple[int, int, int] = (0, 255, 0),
    pred_color: tuple[int, int, int] = (255, 255, 255),
    contour_thickness: int | None = None,
) -> np.ndarray:
    """Blend a colour-mapped anomaly heatmap over an image.

    Args:
        image_rgb: ``(H, W, 3)`` (or grayscale ``(H, W)`` / ``(H, W, 1)``, or RGBA) image, uint8 or
            float in ``[0, 1]`` (a float image with values above 2 is taken to be on a 0-255 scale).
        heatmap: ``(H, W)`` (or ``(1, H, W)``) anomaly map in ``[0, 1]``; values outside are clipped.
        alpha: weight of the colour map (``0`` = image only, ``1`` = heatmap only).
        colormap: any matplotlib colormap name.
        contour_mask: optional ground-truth mask (``> 0.5`` = lesion); its outline is drawn in
            ``gt_color``.
        threshold: optional; the outline of ``heatmap >= threshold`` is drawn in ``pred_color``.
        contour_thickness: outline width in pixels; default scales with the image (1 px per 256).

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = _to_rgb_uint8(image_rgb)
    h, w = img.shape[:2]
    heat = _as_heatmap(heatmap, (h, w))
    cmap = matplotlib.colormaps[colormap]
    colour = cmap(heat)[..., :3] * 255.0  # RGBA float in [0, 1] -> RGB in [0, 255]
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    thickness = contour_thickness or max(1, round(min(h, w) / 256))
    if threshold is not None:
        out[_boundary(heat >= threshold, thickness)] = pred_color
    if contour_mask is not None:
        gt = as_numpy(contour_mask)
        if gt.ndim == 3 and gt.shape[0] == 1:
            gt = gt[0]
        if gt.shape != (h, w):
            raise ValueError(f"contour_mask shape {gt.shape} does not match image shape {(h, w)}")
        # Drawn last so the ground truth stays visible where both outlines coincide.
        out[_boundary(gt > 0.5, thickness)] = gt_color
    return out


def iter_overlay_frames(frames: Iterable[np.ndarray], heatmaps: Sequence[Any], threshold: float) -> Iterator[np.ndarray]:
    """:func:`overlay_heatmap` of each frame with its heatmap and a contour at ``threshold``, one at a time as
    ``frames`` yields them (e.g. a streamed cine loop, into :func:`monai_ultraad.dicom.writers.write_overlay`): a
    loop is never held whole."""
    for frame, heatmap in zip(frames, heatmaps, strict=True):
        yield overlay_heatmap(frame, heatmap, threshold=threshold)


def overlay_frames(frames: Iterable[np.ndarray], heatmaps: Sequence[Any], threshold: float) -> np.ndarray:
    """(F, rows, cols, 3) uint8: :func:`overlay_heatmap` of each frame (taken from ``frames`` one at a time, e.g. a
    streamed cine loop) with its heatmap and a contour at ``threshold``; filled in place, no list of copies."""
    out: np.ndarray | None = None
    for i, blended in enumerate(iter_overlay_frames(frames, heatmaps, threshold)):
        if out is None:
            out = np.empty((len(heatmaps), *blended.shape), np.uint8)
        out[i] = blended
    if out is None:
        raise ValueError("no frames to overlay")
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):  # older Pillow / no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (long words are cut by characters)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = word if not current else f"{current} {word}"
            if draw.textlength(candidate, font=font) <= width or not current:
                current = candidate
            else:
                lines.append(current)
                current = word
            while draw.textlength(current, font=font) > width and len(current) > 1:
                # a single word longer than the line: cut it at a character count that fits
                n = max(1, int(len(current) * width / draw.textlength(current, font=font)))
                lines.append(current[:n])
                current = current[n:]
        lines.append(current)
    return lines


def render_overlay(
    image: Any,
    heatmap: Any,
    title_lines: Sequence[str] = (),
    *,
    alpha: float = 0.45,
    colormap: str = "jet",
    contour_mask: Any | None = None,
    threshold: float | None = None,
    random_weights: bool = False,
    min_width: int = 384,
    font_size: int | None = None,
) -> Image.Image:
    """Overlay plus a caption bar (colour scale and ``title_lines``) as a PIL image.

    See :func:`save_overlay_png`, which writes this picture to disk.
    """
    over = overlay_heatmap(
        image, heatmap, alpha=alpha, colormap=colormap, contour_mask=contour_mask, threshold=threshold
    )
    h, w = over.shape[:2]
    width = max(w, int(min_width))
    size = font_size or max(12, round(width / 32))
    font = _font(size)
    pad = max(4, size // 2)
    line_h = size + max(2, size // 4)

    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = width - 2 * pad
    lines: list[tuple[str, tuple[int, int, int]]] = []
    if random_weights:
        lines += [(t, _RED) for t in _wrap(scratch, SHORT_RANDOM_WEIGHTS_WARNING, font, text_w)]
    for title in title_lines:
        lines += [(t, _CAPTION_FG) for t in _wrap(scratch, str(title), font, text_w)]
    bar_h = max(6, size // 2)  # colour scale strip so viewers can read the heatmap values
    caption_h = pad + bar_h + line_h + len(lines) * line_h + pad

    canvas = Image.new("RGB", (width, h + caption_h), _CAPTION_BG)
    canvas.paste(Image.fromarray(over), ((width - w) // 2, 0))
    draw = ImageDraw.Draw(canvas)

    if random_weights:
        # Also stamped on the image itself, so cropping the caption away cannot remove it.
        stamp_font = _font(max(10, min(size, round(w / 24))))
        box = draw.textbbox((pad, pad), SHORT_RANDOM_WEIGHTS_WARNING, font=stamp_font)
        x0 = (width - w) // 2
        draw.rectangle((x0 + box[0] - 2, box[1] - 2, x0 + box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x0 + pad, pad), SHORT_RANDOM_WEIGHTS_WARNING, fill=_RED, font=stamp_font)

    y = h + pad
    ramp = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, text_w))[:, :3]
    strip = (np.repeat(ramp[None], bar_h, axis=0) * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(strip), (pad, y))
    y += bar_h
    draw.text((pad, y), "0", fill=_CAPTION_FG, font=font)
    label = "anomaly score"
    draw.text(((width - draw.textlength(label, font=font)) / 2, y), label, fill=_CAPTION_FG, font=font)
    draw.text((width - pad - draw.textlength("1", font=font), y), "1", fill=_CAPTION_FG, font=font)
    y += line_h
    for text, fill in lines:
        draw.text((pad, y), text, fill=fill, font=font)
        y += line_h
    return canvas


def save_overlay_png(
    path: str | os.PathLike[str],
    image: Any,
    heatmap: Any,
    title_lines: Sequence[str] = (),
    *,
    alpha: float = 0.45,
    colormap: str = "jet",
    contour_mask: Any | None = None,
    threshold: float | None = None,
    random_weights: bool = False,
    min_width: int = 384,
    font_size: int | None = None,
) -> Path:
    """Write the heatmap overlay with a caption bar to a PNG file, atomically.

    Args:
        path: destination ``.png``; parent folders are created.
        image, heatmap, alpha, colormap, contour_mask, threshold: as in :func:`overlay_heatmap`.
        title_lines: caption lines (e.g. ``"P(malignant) = 0.71"``), wrapped to the picture width.
        random_weights: stamp :data:`SHORT_RANDOM_WEIGHTS_WARNING` in red on the image and the
            caption. Pass ``True`` whenever the backbone was not loaded from pretrained weights.
        min_width: small images are centred on a canvas at least this wide so captions stay legible.
        font_size: caption font size in pixels; default scales with the width.

    Returns:
        The written path.
    """
    picture = render_overlay(
        image,
        heatmap,
        title_lines,
        alpha=alpha,
        colormap=colormap,
        contour_mask=contour_mask,
        threshold=threshold,
        random_weights=random_weights,
        min_width=min_width,
        font_size=font_size,
    )
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def plot_roc_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[Any, Any]],
    title: str = "ROC",
    random_weights: bool = False,
    dpi: int = 120,
) -> Path:
    """Plot one ROC curve per entry of ``curves`` (``name -> (binary targets, scores)``) to a PNG.

    The legend shows each curve's AUROC (:func:`sklearn.metrics.roc_auc_score`). A curve whose
    targets hold a single class has no ROC; it is listed in the legend as undefined instead of
    failing the whole plot. With ``random_weights`` a red warning is printed on the figure. Beyond
    six curves the legend moves beside the plot and every curve gets its own colour and line style
    (matplotlib's default cycle repeats after ten colours).
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # only plots need the ROC points

    many = len(curves) > 6
    fig = Figure(figsize=(9.0 if many else 5.0, 5.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = matplotlib.colormaps["tab20"].colors
    styles = [{"color": palette[i % len(palette)], "linestyle": ("-", "--", ":")[i // len(palette) % 3]}
              for i in range(len(curves))] if many else [{} for _ in curves]
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (0.500)")
    for style, (name, (targets, scores)) in zip(styles, curves.items()):
        t = as_numpy(targets).reshape(-1).astype(np.int64)
        s = as_numpy(scores).reshape(-1).astype(np.float64)
        if t.shape != s.shape:
            raise ValueError(f"curve {name!r}: targets shape {t.shape} does not match scores shape {s.shape}")
        if np.unique(t).size < 2:
            ax.plot([], [], " ", label=f"{name}: AUROC undefined (one class, n={t.size})")
            continue
        fpr, tpr, _ = roc_curve(t, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUROC {roc_auc_score(t, s):.3f}, n={t.size})", **style)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("\n".join(textwrap.wrap(title, 50)) or "ROC")
    if many:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="x-small")
    else:
        ax.legend(loc="lower right", fontsize="small")
    if random_weights:
        fig.text(0.5, 0.005, SHORT_RANDOM_WEIGHTS_WARNING, color="red", ha="center", va="bottom", fontweight="bold")
    fig.tight_layout(rect=(0, 0.04 if random_weights else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def plot_prediction_rocs(
    path: str | os.PathLike[str],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    title: str = "UltraAD",
    random_weights: bool = False,
) -> Path:
    """ROC curves of per-image prediction records (``label``, ``probabilities``, ``anomaly_score``): normal vs
    abnormal from the anomaly score, and each class vs the rest from its probability."""
    names = list(class_names)
    labels = np.array([names.index(p["label"]) for p in predictions])
    curves: dict[str, tuple[Any, Any]] = {
        "normal vs abnormal (anomaly score)": (labels != 0, np.array([p["anomaly_score"] for p in predictions]))
    }
    for i, name in enumerate(names):
        curves[f"{name} vs rest"] = (labels == i, np.array([p["probabilities"][name] for p in predictions]))
    return plot_roc_curves(path, curves, title=title, random_weights=random_weights)
