"""Tests of monai_ultraad.visualize: overlays, captioned PNGs and ROC plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ultraad.visualize import overlay_heatmap, plot_roc_curves, render_overlay, save_overlay_png


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :64]
    image = (rng.random((48, 64)) * 100).astype(np.uint8)
    heat = np.exp(-((yy - 24) ** 2 + (xx - 32) ** 2) / (2 * 8.0**2))
    gt = ((yy - 24) ** 2 + (xx - 30) ** 2) < 10**2
    return image, heat, gt


def test_overlay_shape_dtype_and_heatmap_changes_pixels(scene):
    image, heat, _ = scene
    rgb = np.stack([image] * 3, -1)
    out = overlay_heatmap(rgb, heat)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, rgb)
    # a different heatmap gives a different picture, and alpha=0 gives the image back
    assert not np.array_equal(out, overlay_heatmap(rgb, 1.0 - heat))
    assert np.array_equal(overlay_heatmap(rgb, heat, alpha=0.0), rgb)


def test_overlay_accepts_gray_float_and_torch(scene):
    image, heat, _ = scene
    a = overlay_heatmap(image, heat)  # grayscale uint8
    b = overlay_heatmap(image.astype(np.float32) / 255.0, torch.from_numpy(heat)[None])  # float + (1,H,W)
    assert a.shape == b.shape == (48, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_overlay_contours_are_drawn(scene):
    image, heat, gt = scene
    out = overlay_heatmap(image, heat, contour_mask=gt, threshold=0.5, gt_color=(0, 255, 0), pred_color=(255, 0, 255))
    green = np.all(out == (0, 255, 0), axis=-1)
    magenta = np.all(out == (255, 0, 255), axis=-1)
    assert green.any() and magenta.any()
    assert not green[~gt].any()  # the outline lies on the mask's own boundary pixels


def test_overlay_rejects_mismatched_heatmap(scene):
    image, heat, _ = scene
    with pytest.raises(ValueError, match="heatmap shape"):
        overlay_heatmap(image, heat[:10])
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, heat, alpha=2.0)


def test_save_overlay_png_readable_and_atomic(tmp_path, scene):
    image, heat, gt = scene
    dest = tmp_path / "sub" / "case.png"
    lines = ["normal 0.10 | benign 0.19 | malignant 0.71", "anomaly score 0.83"]
    assert save_overlay_png(dest, image, heat, title_lines=lines, contour_mask=gt, threshold=0.5) == dest
    with Image.open(dest) as im:
        im.load()
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.width >= 64 and im.height > 48  # caption bar below the image
    assert sorted(p.name for p in dest.parent.iterdir()) == ["case.png"]


def test_random_weights_warning_is_red_on_the_picture(scene):
    image, heat, _ = scene
    plain = np.asarray(render_overlay(image, heat, ["x"], random_weights=False))
    warned = np.asarray(render_overlay(image, heat, ["x"], random_weights=True))

    def reddish(a):
        a = a.astype(int)
        return int(np.sum((a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)))

    assert warned.shape[0] > plain.shape[0]  # an extra caption line
    img_h = 48
    # red text in the caption and stamped on the image itself
    assert reddish(warned[img_h:]) > reddish(plain[img_h:]) + 20
    assert reddish(warned[:img_h]) > reddish(plain[:img_h])


def test_plot_roc_curves_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, 60)
    s = t + rng.normal(0, 1, 60)
    dest = tmp_path / "roc.png"
    curves = {"image": (t, s), "perfect": (t, t.astype(float)), "one class": (np.zeros(4), np.ones(4))}
    plot_roc_curves(dest, curves, title="test ROC", random_weights=True)
    with Image.open(dest) as im:
        im.load()
        assert im.format == "PNG" and im.width > 100
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]
    with pytest.raises(ValueError, match="shape"):
        plot_roc_curves(tmp_path / "bad.png", {"x": (t, s[:5])})
    assert not (tmp_path / "bad.png").exists()



def test_many_roc_curves_get_distinct_styles_and_a_side_legend(tmp_path):
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, 80)
    curves = {f"method {i}": (t, t * (i / 17) + rng.normal(0, 1, 80)) for i in range(17)}
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    plot_roc_curves(few, dict(list(curves.items())[:3]))
    plot_roc_curves(many, curves)
    with Image.open(few) as a, Image.open(many) as b:
        assert b.width > 1.5 * a.width and b.height == a.height  # the legend sits beside the plot
        pixels = np.asarray(b.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in pixels[(pixels.max(1) - pixels.min(1)) > 60]}  # saturated: curve colours
    assert len(colours) >= 10

def test_float_image_on_0_255_scale_is_not_clipped_to_white(scene):
    image, heat, _ = scene
    a = overlay_heatmap(image, heat, alpha=0.0)
    b = overlay_heatmap(image.astype(np.float32), heat, alpha=0.0)  # float, 0-255 values
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
