"""The viewer SEG (monai_ultraad.dicom.viewer_seg) and its Slicer .seg.nrrd, checked with the viewers' own tools.

The outside truth: dcmqi's ``segimage2itkimage`` (what 3D Slicer's DICOM SEG plugin runs), highdicom's reader,
dciodvfy, and the way 3D Slicer places an ultrasound image - Slicer's DICOMImageSequencePlugin
(Modules/Scripted/DICOMPlugins/DICOMImageSequencePlugin.py): every frame a 2D volume at origin 0 with spacing
``[PhysicalDeltaX * 10, PhysicalDeltaY * 10]`` when the object has exactly one 2D tissue (or colour flow) region in cm,
otherwise the reader's spacing (1 for ultrasound). :func:`_slicer_placed_frame` restates that rule from Slicer's code,
independently of the module under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from monai_ultraad.dicom.synthetic import wrap_as_ultrasound
from monai_ultraad.dicom.viewer_seg import DISPLAY_GEOMETRY_NOTE, write_viewer_segmentations
from monai_ultraad.dicom.writers import AlgorithmInfo, FramePrediction, UIDFactory

THRESHOLD = 0.5
UCLM_IMAGE = "ALWI_000"  # a benign BUS-UCLM image with a lesion mask


def _algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        version="0.1.0", backbone="UltraAD-Tiny-ViT", weights_id="random", checkpoint_sha256="ab" * 32,
        random_weights=True,
    )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install dcmqi; apt-get install dicom3tools)")
    return path


def _uclm(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    root = data_dir / "bus_uclm"
    rgb = np.asarray(Image.open(root / "images" / f"{UCLM_IMAGE}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(root / "masks" / f"{UCLM_IMAGE}.png").convert("L")) > 127
    assert mask.any() and mask.shape == rgb.shape[:2]
    return rgb, mask


def _wrap(rgb: np.ndarray, path: Path, *, delta_x_cm: float | None, delta_y_cm: float | None, frames=None) -> Path:
    """Wrap as ultrasound; with deltas, one calibrated 2D tissue region of unequal x / y spacing (a transposed
    geometry cannot pass), without, no region."""
    wrap_as_ultrasound(rgb, path, with_region=delta_x_cm is not None, frames=frames)
    if delta_x_cm is not None:
        ds = pydicom.dcmread(path)
        region = ds.SequenceOfUltrasoundRegions[0]
        region.PhysicalDeltaX, region.PhysicalDeltaY = delta_x_cm, delta_y_cm
        ds.save_as(path)
    return path


def _slicer_placed_frame(path: Path) -> sitk.Image:
    """The geometry 3D Slicer gives one frame of ``path`` (see the module docstring): a 2D-in-3D reference image."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = [1.0, 1.0]
    regions = ds.get("SequenceOfUltrasoundRegions", [])
    if len(regions) == 1:
        r = regions[0]
        if (
            r.RegionSpatialFormat == 1 and r.RegionDataType in (1, 2)
            and r.PhysicalUnitsXDirection == 3 and r.PhysicalUnitsYDirection == 3
        ):
            spacing = [float(r.PhysicalDeltaX) * 10.0, float(r.PhysicalDeltaY) * 10.0]
    frame = sitk.Image([int(ds.Columns), int(ds.Rows), 1], sitk.sitkUInt8)
    frame.SetSpacing([spacing[0], spacing[1], 1.0])
    frame.SetOrigin([0.0, 0.0, 0.0])  # Slicer: croppedOutput.SetOrigin(0, 0, 0), IJK-to-RAS diag(-1, -1, 1) = LPS id
    return frame


def _dcmqi_label(seg_path: Path, out: Path) -> tuple[sitk.Image, dict]:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [_tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory", str(out), "--outputType",
         "nrrd"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    labels = sorted(out.glob("*.nrrd"))
    assert result.returncode == 0 and labels, result.stdout + result.stderr
    return sitk.ReadImage(str(labels[0])), json.loads((out / "meta.json").read_text())


def _label_on_image(label: sitk.Image, image: sitk.Image) -> np.ndarray:
    """The label as seen over the image in physical space (nearest neighbour), as (rows, cols) bool."""
    on_image = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return sitk.GetArrayFromImage(on_image)[0] > 0


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([_tool("dciodvfy"), str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _prediction(frame: int, mask: np.ndarray) -> FramePrediction:
    heat = np.where(mask, 0.9, 0.1).astype(np.float32)  # the model's binary heatmap is exactly the known mask
    return FramePrediction(frame, heat, {"normal": 0.2, "benign": 0.7, "malignant": 0.1}, 0.8)


@pytest.mark.realdata
@pytest.mark.parametrize("calibrated", [True, False], ids=["one-region", "uncalibrated"])
def test_dcmqi_label_covers_the_mask_where_slicer_places_the_image(data_dir, tmp_path, calibrated):
    rgb, mask = _uclm(data_dir)
    source_path = _wrap(rgb, tmp_path / "us.dcm", delta_x_cm=0.012 if calibrated else None, delta_y_cm=0.02)
    source = pydicom.dcmread(source_path)
    paths = write_viewer_segmentations(
        source, [_prediction(1, mask)], THRESHOLD, tmp_path / "out", _algorithm(), UIDFactory("viewer")
    )
    seg_path, nrrd_path = paths
    assert seg_path.suffix == ".dcm" and nrrd_path.name.endswith(".seg.nrrd")

    ds = pydicom.dcmread(seg_path)
    assert ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID != source.get("FrameOfReferenceUID") and "FrameOfReferenceUID" not in source
    assert DISPLAY_GEOMETRY_NOTE in ds.ContentDescription and "geometry derived for display" in ds.SeriesDescription
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
    assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    expected_spacing = [0.2, 0.12] if calibrated else [1.0, 1.0]  # (row, column) mm
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(expected_spacing)
    assert ("unit spacing" in ds.ImageComments) is not calibrated
    assert _dciodvfy_errors(seg_path) == []

    # highdicom reads it back, frame referenced to the source
    seg = hd.seg.segread(seg_path)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
    )[0, ..., 0]
    np.testing.assert_array_equal(got.astype(bool), mask)

    # dcmqi -> ITK label, compared in physical space with the image where Slicer puts it
    image = _slicer_placed_frame(source_path)
    label, meta = _dcmqi_label(seg_path, tmp_path / "dcmqi")
    assert label.GetSize() == image.GetSize()
    assert label.GetOrigin() == pytest.approx(image.GetOrigin())
    assert label.GetSpacing() == pytest.approx(image.GetSpacing())
    assert label.GetDirection() == pytest.approx(image.GetDirection())
    np.testing.assert_array_equal(_label_on_image(label, image), mask)
    assert meta["segmentAttributes"][0][0]["SegmentLabel"] == "Lesion"

    # Slicer's own file: same geometry, same pixels
    seg_nrrd = sitk.ReadImage(str(nrrd_path))
    assert seg_nrrd.GetMetaData("Segment0_Name") == "Lesion"
    assert seg_nrrd.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    assert seg_nrrd.GetSpacing() == pytest.approx(image.GetSpacing())
    assert seg_nrrd.GetOrigin() == pytest.approx(image.GetOrigin())
    np.testing.assert_array_equal(_label_on_image(seg_nrrd, image), mask)


@pytest.mark.realdata
def test_cine_gets_one_2d_viewer_seg_per_analysed_frame(data_dir, tmp_path):
    """Slicer loads a cine as a sequence of 2D frames at origin 0: each analysed frame's SEG converts to a 2D label
    over that geometry, and names its source frame."""
    rgb, mask = _uclm(data_dir)
    frames = np.stack([rgb, rgb[:, ::-1], rgb])
    source_path = _wrap(rgb, tmp_path / "cine.dcm", delta_x_cm=0.012, delta_y_cm=0.02, frames=frames)
    source = pydicom.dcmread(source_path)
    masks = {1: mask, 3: mask[:, ::-1]}  # frame 2 not analysed (frame step), frame 3's mask mirrored
    paths = write_viewer_segmentations(
        source, [_prediction(f, m) for f, m in masks.items()], THRESHOLD, tmp_path / "out", _algorithm(),
        UIDFactory("cine"),
    )
    segs = [p for p in paths if p.suffix == ".dcm"]
    assert len(segs) == 2 and len([p for p in paths if p.name.endswith(".seg.nrrd")]) == 2
    image = _slicer_placed_frame(source_path)
    series = set()
    for (frame, expected), seg_path in zip(masks.items(), segs):
        ds = pydicom.dcmread(seg_path)
        series.add(ds.SeriesInstanceUID)
        reference = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert int(reference.ReferencedFrameNumber) == frame
        assert f"source frame {frame}" in ds.ContentDescription
        assert _dciodvfy_errors(seg_path) == []
        label, _ = _dcmqi_label(seg_path, tmp_path / f"dcmqi{frame}")
        assert label.GetSize() == image.GetSize() and label.GetOrigin() == pytest.approx((0, 0, 0))
        np.testing.assert_array_equal(_label_on_image(label, image), expected)
    assert len(series) == 1  # one viewer series per source
