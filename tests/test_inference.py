"""The one predictor (monai_ultraad.inference), its record (monai_ultraad.records) and streamed frames."""

from __future__ import annotations

import tracemalloc

import jsonschema
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from monai_ultraad import engine
from monai_ultraad.inference import AnalysisWindow, Predictor, compact_heatmap
from tests.record_schema import check_record


@pytest.fixture(scope="module")
def predictor(tiny_backbone) -> Predictor:
    return Predictor(engine.build_model(tiny_backbone, seed=0), threshold=0.4, batch_size=3)


def _picture(seed: int = 0, shape=(90, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random((*shape, 3)), (3, 3, 0)) * 255).clip(0, 255).astype(np.uint8)


def _smooth_heatmap(seed: int = 0) -> np.ndarray:
    h = ndimage.gaussian_filter(np.random.default_rng(seed).random((240, 320)), 6)
    return ((h - h.min()) / (h.max() - h.min())).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.123456789, 0.61803])
def test_compact_heatmap_keeps_the_mask_and_the_seg_values(threshold):
    heat = _smooth_heatmap()
    half = compact_heatmap(heat, threshold)
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - heat).max() <= 2**-10
    np.testing.assert_array_equal(half.astype(np.float32) >= np.float32(threshold), heat >= np.float32(threshold))
    np.testing.assert_array_equal(half.astype(np.float64) >= threshold, heat.astype(np.float64) >= threshold)
    fractional = np.around(half.astype(np.float32) * np.float32(255))  # as highdicom builds a FRACTIONAL SEG
    np.testing.assert_array_equal(fractional, np.around(heat * np.float32(255)))
    # the test can fail: a plain cast changes SEG values on this map
    assert (np.around(heat.astype(np.float16).astype(np.float32) * np.float32(255)) != fractional).any()


def test_prediction_record_follows_the_schema(predictor):
    prediction = predictor.predict_image(_picture(), "scan.png")
    record = check_record(prediction.record())
    assert record["image"] == "scan.png" and record["frame_number"] == 1
    assert record["predicted_class"] == max(record["class_probabilities"], key=record["class_probabilities"].get)
    assert record["lesion_pixels"] == int((prediction.heatmap >= 0.4).sum())
    assert record["random_weights"] and "RANDOM WEIGHTS" in record["warning"]
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail: a key of the other shapes
        check_record({**record, "probabilities": record["class_probabilities"]})
    with pytest.raises(jsonschema.ValidationError):
        check_record({k: v for k, v in record.items() if k != "warning"})  # random weights must say so
    with pytest.raises(ValueError):
        prediction.record(predicted="benign")


def test_frames_are_scored_as_they_come(predictor):
    """At most one batch of frames is taken from the iterator before its predictions are yielded."""
    pulled = []

    def frames():
        for i in range(7):
            pulled.append(i)
            yield _picture(i)

    out = []
    for prediction in predictor.predict_frames(frames(), range(1, 8), "cine.dcm"):
        assert len(pulled) - len(out) <= predictor.batch_size
        out.append(prediction)
    assert [p.frame_number for p in out] == list(range(1, 8)) and len(pulled) == 7
    # batching does not change the answer
    single = predictor.predict_image(_picture(4), "cine.dcm", frame_number=5)
    np.testing.assert_allclose(out[4].heatmap, single.heatmap, atol=1e-5)
    assert out[4].class_probs == pytest.approx(single.class_probs, abs=1e-5)


def test_windows_map_back_into_the_frame(predictor):
    window = AnalysisWindow(10, 70, 20, 100)
    prediction = predictor.predict_image(_picture(), windows=[window])
    assert prediction.heatmap.shape == (90, 120) and prediction.heatmap.dtype == np.float32
    outside = np.ones((90, 120), bool)
    outside[10:70, 20:100] = False
    assert prediction.heatmap[outside].max() == 0 and prediction.heatmap[~outside].max() > 0


def test_png_and_the_same_pixels_in_dicom_give_the_same_prediction(predictor, tmp_path):
    from monai_ultraad.dicom.reader import open_ultrasound
    from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

    rgb = _picture(3)
    Image.fromarray(rgb).save(tmp_path / "scan.png")
    wrap_as_ultrasound(rgb, tmp_path / "scan.dcm", with_region=False)
    from_png = predictor.predict_file(tmp_path / "scan.png")
    image = open_ultrasound(tmp_path / "scan.dcm")
    (from_dicom,) = predictor.predict_frames(image.iter_frames(), image.frame_numbers, "scan.dcm")
    np.testing.assert_array_equal(from_png.heatmap, from_dicom.heatmap)
    assert from_png.class_probs == from_dicom.class_probs and from_png.anomaly_score == from_dicom.anomaly_score


@pytest.mark.realdata
def test_a_cine_loop_is_decoded_one_frame_at_a_time(data_dir):
    """Iterating a 120-frame cine needs no more memory than iterating 10 of its frames (read_ultrasound, which
    decodes the loop at once, holds 120 decoded frames)."""
    from monai_ultraad.dicom.reader import open_ultrasound, read_ultrasound

    path = data_dir / "dicom" / "pydicom-data" / "color3d_jpeg_baseline.dcm"
    image = open_ultrasound(path)
    assert image.frames is None and len(image.frame_numbers) == 120
    frame_bytes = image.rows * image.cols * 3
    peaks = {}
    tracemalloc.start()
    try:
        for n in (10, 120):
            tracemalloc.reset_peak()
            assert sum(1 for _ in image.iter_frames(range(n))) == n
            peaks[n] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peaks[120] < peaks[10] + 2 * frame_bytes, {n: p / frame_bytes for n, p in peaks.items()}
    assert peaks[120] < 20 * frame_bytes  # the compressed stream plus about one frame, not the loop
    frames = list(open_ultrasound(path, frame_step=40).iter_frames([0, 2]))
    np.testing.assert_array_equal(frames[1], read_ultrasound(path, frame_step=40).frames[2])
