"""HeatmapSpool: heatmaps written to an unnamed file come back exactly, as arrays, one frame at a time."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ultraad.heatmap_spool import HeatmapSpool
from monai_ultraad.inference import Prediction, compact_heatmap


def test_heatmaps_come_back_exactly_and_leave_no_file(tmp_path):
    rng = np.random.default_rng(0)
    maps = [compact_heatmap(rng.random((37, 45), dtype=np.float32), 0.5) for _ in range(5)]
    with HeatmapSpool(tmp_path) as spool:
        spooled = [spool.put(m) for m in maps]
        assert spool.nbytes == sum(m.nbytes for m in maps)
        assert list(tmp_path.iterdir()) == []  # unnamed: nothing in the folder, even while open
        for original, stand_in in zip(reversed(maps), reversed(spooled), strict=True):  # any order
            assert stand_in.shape == original.shape and stand_in.dtype == np.float16
            back = np.asarray(stand_in)
            np.testing.assert_array_equal(back, original)
            back[:] = 0  # a fresh, writable array each time: the spool is not changed
            np.testing.assert_array_equal(np.asarray(stand_in, dtype=np.float32), original.astype(np.float32))
    with pytest.raises(ValueError, match="closed"):
        np.asarray(spooled[0])


def test_a_spooled_prediction_is_the_same_prediction(tmp_path):
    heat = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    prediction = Prediction(image="x", frame_number=3, heatmap=compact_heatmap(heat, 0.5),
                            class_probs={"normal": 0.2, "benign": 0.3, "malignant": 0.5}, anomaly_score=0.7,
                            threshold=0.5)
    with HeatmapSpool(tmp_path) as spool:
        spooled = spool.spool(prediction)
        assert spooled.frame_number == 3 and spooled.anomaly_score == 0.7
        np.testing.assert_array_equal(spooled.lesion_mask, prediction.lesion_mask)
