"""MONAI Label labels as 3D Slicer 5.12's MONAI Label module loads them.

The module (Project-MONAI/MONAILabel plugins/slicer/MONAILabel/MONAILabel.py) reads the infer label with
``sitk.ReadImage`` and calls ``sitkUtils.PushVolumeToSlicer`` (Slicer Base/Python/sitkUtils.py), which builds the
IJK-to-RAS matrix from ``GetDirection()[row * 3 + col] * GetSpacing()[col]`` for row, col in 0..2 and
``GetOrigin()[row]``, then flips LPS to RAS. :func:`_push_volume_ijk_to_ras` restates those lines; a 2D label makes
them raise IndexError, as in Slicer. The image is placed the way Slicer's volume reader places a 2D picture or a
one-slice NIfTI: its ITK geometry, extended to 3D with z origin 0, spacing 1, direction (0, 0, 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "monailabel_app"))
from lib.imageio import read_label, read_picture, write_label

UCLM_IMAGE = "ALWI_000"


def _push_volume_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    spacing, direction, origin = image.GetSpacing(), image.GetDirection(), image.GetOrigin()
    ijk_to_lps = np.eye(4)
    for row in range(3):
        for col in range(3):
            ijk_to_lps[row, col] = direction[row * 3 + col] * spacing[col]
        ijk_to_lps[row, 3] = origin[row]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps


def _slicer_image_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    if image.GetDimension() == 2:
        (ox, oy), (sx, sy), d = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
        ijk_to_lps = np.array([[d[0] * sx, d[1] * sy, 0, ox], [d[2] * sx, d[3] * sy, 0, oy], [0, 0, 1, 0], [0, 0, 0, 1]])
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    return _push_volume_ijk_to_ras(image)


def _check_overlay(image_path: Path, mask: np.ndarray) -> None:
    picture = read_picture(image_path)
    label_path = Path(write_label(mask.astype(np.uint8), picture.reference))
    try:
        label = sitk.ReadImage(str(label_path))
        image = sitk.ReadImage(str(image_path))
        assert label.GetDimension() == 3 and label.GetSize() == (mask.shape[1], mask.shape[0], 1)
        np.testing.assert_allclose(_push_volume_ijk_to_ras(label), _slicer_image_ijk_to_ras(image), atol=1e-9)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label)[0], mask)  # voxel (i, j, 0) over pixel (i, j)
        np.testing.assert_array_equal(read_label(label_path, mask.shape), mask)  # and it comes back as uploaded
    finally:
        label_path.unlink(missing_ok=True)


@pytest.mark.realdata
def test_label_of_a_jpeg_is_3d_and_overlays_the_image(data_dir):
    root = data_dir / "bus_uclm"
    mask = (np.asarray(Image.open(root / "masks" / f"{UCLM_IMAGE}.png").convert("L")) > 127).astype(np.uint8)
    _check_overlay(root / "images" / f"{UCLM_IMAGE}.jpg", mask)


def test_label_of_a_one_slice_nifti_keeps_its_geometry(tmp_path):
    """The DICOMweb datastore hands NIfTI converted from DICOM: origin, spacing and direction are kept."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 255, (1, 30, 40), dtype=np.uint8))
    image.SetSpacing((0.12, 0.2, 1.0))
    image.SetOrigin((5.0, -3.0, 2.0))
    path = tmp_path / "us.nii.gz"
    sitk.WriteImage(image, str(path))
    mask = np.zeros((30, 40), np.uint8)
    mask[5:12, 20:33] = 2
    _check_overlay(path, mask)


def test_a_2d_label_fails_in_push_volume_to_slicer_as_in_slicer():
    with pytest.raises(IndexError):
        _push_volume_ijk_to_ras(sitk.Image([4, 3], sitk.sitkUInt8))
