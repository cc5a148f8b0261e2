"""The same pixels as a PNG (``ultraad predict``) and wrapped in ultrasound DICOM (the deploy app's reader and frame
inference) give the same prediction: class probabilities, anomaly score and the heatmap at source resolution."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_ultraad import engine
from monai_ultraad.cli import main
from monai_ultraad.dicom.reader import read_ultrasound
from monai_ultraad.dicom.synthetic import wrap_as_ultrasound


def _scan(rows: int = 150, cols: int = 210) -> np.ndarray:
    """A grey speckle picture with a dark oval "lesion" (RGB, equal channels, as ultrasound is)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:rows, :cols]
    grey = 120 + 40 * rng.standard_normal((rows, cols))
    grey[((yy - 70) / 25) ** 2 + ((xx - 120) / 40) ** 2 <= 1] = 30
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def untrained_checkpoint(tiny_backbone, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    engine.save_checkpoint(path, engine.build_model(tiny_backbone, seed=0), threshold=0.5)
    return path


def test_png_and_dicom_of_the_same_pixels_give_the_same_prediction(untrained_checkpoint, tmp_path):
    from monai_ultraad.inference import Predictor, analysis_windows

    rgb = _scan()
    png = tmp_path / "scan.png"
    Image.fromarray(rgb).save(png)
    dcm = wrap_as_ultrasound(rgb, tmp_path / "scan.dcm", with_region=False)

    out = tmp_path / "cli"
    main(["predict", "--checkpoint", str(untrained_checkpoint), "--images", str(png), "--output_dir", str(out),
          "--allow_random_init", "--progress", "False", "--device", "cpu"])
    record = json.loads((out / "scan.json").read_text())
    heat_png = np.asarray(nib.load(out / "scan_heatmap.nii.gz").dataobj, dtype=np.float32).squeeze()

    source = read_ultrasound(dcm)
    np.testing.assert_array_equal(source.frames[0], rgb)  # the reader gives back the very pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = engine.load_checkpoint(untrained_checkpoint, allow_random_init=True)
    windows = analysis_windows(source.tissue_regions, source.rows, source.cols)
    frame = next(Predictor(model, 0.5).predict_frames(source.frames, source.frame_numbers, windows=windows))

    assert frame.heatmap.shape == rgb.shape[:2]
    if heat_png.shape != frame.heatmap.shape:  # NIfTI stores (x, y): columns first
        heat_png = heat_png.T
    np.testing.assert_allclose(heat_png, frame.heatmap, atol=1e-4)
    assert float(frame.heatmap.max() - frame.heatmap.min()) > 1e-3  # a map with structure, not a constant
    for name, p in frame.class_probs.items():
        assert record["class_probabilities"][name] == pytest.approx(p, abs=1e-5)
    assert record["anomaly_score"] == pytest.approx(frame.anomaly_score, abs=1e-5)
