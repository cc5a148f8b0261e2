"""Mark removal: the detected cross is gone afterwards, nothing else in the image changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from monai_ultraad.quality import detect_marks
from monai_ultraad.quality.mark_removal import remove_marks
from monai_ultraad.quality.transforms import RemoveMarksd

from .synthetic import bmode, draw_cross


@pytest.mark.parametrize("method", ["inpaint", "mask"])
def test_cross_is_removed_and_the_rest_kept(method):
    clean = bmode(seed=2)
    marked = draw_cross(clean, (60, 150))
    found = detect_marks(marked)
    assert found.flagged
    out = remove_marks(marked, found.mask, method)
    assert out.dtype == np.uint8 and not detect_marks(out).flagged
    touched = ndi.binary_dilation(found.mask, iterations=1)
    assert np.array_equal(out[~touched], marked[~touched])  # only the glyph (and its 1-px rim) changed
    # the filled pixels are close to the speckle that was there before the cross was drawn
    assert np.abs(out[touched].astype(int) - clean[touched]).mean() < np.abs(marked[touched].astype(int) - clean[touched]).mean() / 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        remove_marks(bmode(), np.zeros((272, 384), bool), "blur")
    with pytest.raises(ValueError, match="does not match"):
        remove_marks(bmode(), np.zeros((10, 10), bool))


def test_transform_on_a_loaded_image():
    marked = draw_cross(bmode(seed=7), (100, 100)).astype(np.float32) / 255.0
    image = MetaTensor(torch.from_numpy(np.moveaxis(marked, -1, 0).copy()), meta={"filename_or_obj": "x.png"})
    out = RemoveMarksd()({"image": image})
    assert out["image_marks_removed"] == 1 and isinstance(out["image"], MetaTensor)
    assert out["image"].meta["filename_or_obj"] == "x.png"
    assert not detect_marks(np.moveaxis(out["image"].numpy(), 0, -1)).flagged
    plain = RemoveMarksd()({"image": torch.from_numpy(np.moveaxis(bmode(seed=8), -1, 0).astype(np.float32) / 255)})
    assert plain["image_marks_removed"] == 0
