"""Tests of the ultrasound DICOM reader, folder scan and synthetic writer.

Real-file tests (``realdata``) read the 29 public ultrasound objects of ``shared/data/dicom`` in place; the rest build
small objects in ``tmp_path``. dciodvfy (Debian package ``dicom3tools``) validates the synthetic objects when installed.
"""

from __future__ import annotations

import csv
import pickle
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from monai_ultraad.data import default_data_dir
from monai_ultraad.dicom import (
    UltrasoundRegion,
    UnsupportedDicomError,
    read_ultrasound,
    scan_folder,
    wrap_as_ultrasound,
)
from monai_ultraad.errors import InputDataError


def _manifest() -> list[dict[str, str]]:
    root = default_data_dir()
    manifest = None if root is None else root / "dicom" / "MANIFEST.csv"
    if manifest is None or not manifest.is_file():
        return []
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


MANIFEST = _manifest()
JPEG_XL_FILE = "dcm4che/will-jxl.dcm"
JPEG_XL_UID = "1.2.840.10008.1.2.4.111"
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def dicom_dir() -> Path:
    """``shared/data/dicom`` (or ``$ULTRAAD_DATA_DIR/dicom``); the test is skipped when it is absent."""
    root = default_data_dir()
    if root is None or not (root / "dicom" / "MANIFEST.csv").is_file():
        pytest.skip("real DICOM data not found: set ULTRAAD_DATA_DIR or place shared/data beside the project")
    return root / "dicom"


@pytest.fixture(scope="module")
def uclm_image() -> tuple[np.ndarray, str]:
    """One real BUS-UCLM picture (RGB uint8) and its name, to wrap into DICOM."""
    from PIL import Image

    root = default_data_dir()
    labels = None if root is None else root / "bus_uclm" / "labels.csv"
    if labels is None or not labels.is_file():
        pytest.skip("bus_uclm not found: set ULTRAAD_DATA_DIR or place shared/data beside the project")
    with labels.open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["label"] == "malignant")
    with Image.open(root / "bus_uclm" / row["image"]) as image:
        return np.asarray(image.convert("RGB")), Path(row["image"]).name


def _manifest_params() -> list:
    if not MANIFEST:  # keeps collection working without data; the fixture reports the skip reason
        return [pytest.param(None, id="no-manifest")]
    return [pytest.param(row, id=row["file"]) for row in MANIFEST]


def _region_count(text: str) -> int:
    return 0 if text.strip().lower().endswith("no") else int(text.split(":")[1].split("region")[0])


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy for ``path``."""
    result = subprocess.run([DCIODVFY, str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _noise(rows: int = 40, cols: int = 50, frames: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (rows, cols, 3) if frames is None else (frames, rows, cols, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _expect_rejected(path: Path, *fragments: str) -> UnsupportedDicomError:
    with pytest.raises(UnsupportedDicomError) as info:
        read_ultrasound(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, InputDataError)
    return info.value


# --- every real file of the manifest ------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("row", _manifest_params())
def test_manifest_file(dicom_dir: Path, row: dict[str, str]) -> None:
    path = dicom_dir / row["file"]
    image = read_ultrasound(path)  # JPEG XL included: monai_ultraad/dicom/jpegxl.py (imagecodecs)
    rows, cols = (int(v) for v in row["rows_x_cols"].split("x"))
    frames = int(row["frames"])
    assert image.frames.dtype == np.uint8
    assert image.frames.shape == (frames, rows, cols, 3)
    assert image.frame_numbers == list(range(1, frames + 1))
    assert image.number_of_frames == frames and image.is_multiframe == (frames > 1)
    assert image.photometric == row["photometric"]
    assert len(image.regions) == _region_count(row["us_regions"])
    assert "PixelData" not in image.dataset and image.dataset.Modality == "US"
    assert image.frames.max() > image.frames.min()  # something was decoded, not a blank buffer


@pytest.mark.realdata
def test_palette_16_bit_gives_real_colours(dicom_dir: Path) -> None:
    path = dicom_dir / "pydicom-data/gdcm-US-ALOKA-16.dcm"
    frame = read_ultrasound(path).frames[0].astype(np.int32)
    red, green, blue = frame[..., 0], frame[..., 1], frame[..., 2]
    # The ALOKA table tints the background blue-grey and draws green markers (verified on the decoded image).
    assert ((green - np.maximum(red, blue)) > 50).sum() > 300
    assert ((blue - red) > 3).mean() > 0.05
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 50 and frame.max() > 200  # 16 -> 8 bit, not dark
    ds = pydicom.dcmread(path)
    reference = apply_color_lut(ds.pixel_array, ds) >> 8
    np.testing.assert_array_equal(frame, reference)


# Windows (rows, cols) of grey B-mode tissue, checked by eye on the decoded frames. A missing YCbCr->RGB conversion
# gives a median channel spread of 70-116 there, a double conversion about 133: both fail the <= 1 median.
GREY_WINDOWS = {
    "dcm4che/YBR_422.dcm": (slice(100, 300), slice(250, 750)),
    "dcm4che/YBR_FULL-RLE.dcm": (slice(60, 400), slice(100, 480)),
    "fo-dicom/DIRW0007.dcm": (slice(150, 350), slice(180, 420)),
    "pydicom-data/color3d_jpeg_baseline.dcm": (slice(150, 380), slice(200, 450)),
    "pylibjpeg-data/JPEGExtended_3s_1f_u_08_08.dcm": (slice(300, 520), slice(120, 560)),
    "pydicom-data/US1_J2KI.dcm": (slice(300, 335), slice(20, 620)),
    "pydicom-data/US1_J2KR.dcm": (slice(300, 335), slice(20, 620)),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(GREY_WINDOWS))
def test_ybr_grey_area_is_grey(dicom_dir: Path, name: str) -> None:
    frame = read_ultrasound(dicom_dir / name, max_frames=1).frames[0].astype(np.int32)
    window = frame[GREY_WINDOWS[name]]
    spread = window.max(axis=-1) - window.min(axis=-1)
    assert window.mean() > 15  # tissue, not background
    assert np.median(spread) <= 1 and np.percentile(spread, 95) <= 4


@pytest.mark.realdata
@pytest.mark.parametrize(
    "names",
    [
        ("pydicom-data/OBXXXX1A.dcm", "pydicom-data/OBXXXX1A_expb.dcm", "pydicom-data/OBXXXX1A_rle.dcm"),
        ("pydicom-data/OBXXXX1A_2frame.dcm", "pydicom-data/OBXXXX1A_rle_2frame.dcm"),
        ("pydicom-data/gdcm-US-ALOKA-16.dcm", "pydicom-data/gdcm-US-ALOKA-16_big.dcm"),
        ("dcm4che/US-PAL-8-10x-echo.dcm", "dcm4che/jpeg-ls-Palette.dcm"),
        ("pydicom-data/US1_UNCR.dcm", "pydicom-data/US1_J2KR.dcm", "wearemothership-dicom-test-files/US1_RLE.dcm"),
        ("pydicom-data/color-pl.dcm", "pydicom-data/color-px.dcm"),
    ],
    ids=["palette-LE-BE-RLE", "palette-2frame", "palette16-LE-BE", "palette-RLE-JPEGLS", "rgb-RCT-RLE", "planar"],
)
def test_lossless_encodings_of_one_image_agree(dicom_dir: Path, names: tuple[str, ...]) -> None:
    """Byte order, planar configuration, RLE, JPEG-LS and lossless JPEG 2000 must not change a single pixel."""
    first = read_ultrasound(dicom_dir / names[0]).frames
    for name in names[1:]:
        np.testing.assert_array_equal(read_ultrasound(dicom_dir / name).frames, first, err_msg=name)


@pytest.mark.realdata
def test_regions(dicom_dir: Path) -> None:
    image = read_ultrasound(dicom_dir / "dcm4che/YBR_422.dcm")
    (region,) = image.regions
    assert (region.x0, region.y0, region.x1, region.y1) == (184, 75, 799, 554)
    assert region.physical_units_x == region.physical_units_y == 3
    assert region.physical_delta_x == pytest.approx(0.00616) and region.physical_delta_y == pytest.approx(0.00616)
    assert region.is_tissue and image.tissue_regions == [region]
    assert region.pixel_spacing_mm == pytest.approx((0.0616, 0.0616))
    assert region.slices == (slice(75, 555), slice(184, 800))  # inclusive Max -> exclusive stop
    assert image.pixel_spacing_mm == pytest.approx((0.0616, 0.0616))

    # Two regions, the first an uncalibrated whole-screen one: only the second is tissue with a spacing.
    image = read_ultrasound(dicom_dir / "dcm4che/YBR_FULL-RLE.dcm")
    assert [r.is_tissue for r in image.regions] == [False, True]
    assert image.regions[0].pixel_spacing_mm is None
    assert image.tissue_regions[0].pixel_spacing_mm == pytest.approx((0.09536785, 0.09536785))

    # OBXXXX1A's tissue region claims Max X1 = 800 in an 800-column image: slices are clipped to the image.
    image = read_ultrasound(dicom_dir / "pydicom-data/OBXXXX1A.dcm")
    tissue = image.tissue_regions[0]
    assert tissue.x1 == 800 and tissue.slices[1] == slice(120, 800)
    assert image.frames[0][tissue.slices].shape == (459, 680, 3)
    assert [r.is_tissue for r in image.regions] == [True, False]


@pytest.mark.realdata
def test_frame_selection_decodes_only_the_chosen_frames(dicom_dir: Path) -> None:
    path = dicom_dir / "pydicom-data/color3d_jpeg_baseline.dcm"  # 120 frames of 480x640 RGB
    image = read_ultrasound(path, frame_step=7, max_frames=5)
    assert image.frame_numbers == [1, 8, 15, 22, 29] and image.frames.shape == (5, 480, 640, 3)
    assert image.number_of_frames == 120
    for kept, number in zip(image.frames, image.frame_numbers):
        np.testing.assert_array_equal(kept, pixel_array(path, index=number - 1))
    assert read_ultrasound(path, frame_step=50).frame_numbers == [1, 51, 101]

    # Memory stays bounded: all 120 frames would be 110 MB; three kept frames and one in flight are about 4 MB.
    tracemalloc.start()
    try:
        read_ultrasound(path, frame_step=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.realdata
def test_truncated_real_rle_file(dicom_dir: Path, tmp_path: Path) -> None:
    data = (dicom_dir / "pydicom-data/OBXXXX1A_rle.dcm").read_bytes()
    cut = tmp_path / "cut_rle.dcm"
    cut.write_bytes(data[: len(data) // 2])
    _expect_rejected(cut, "truncated")


# --- bad inputs built in tmp_path ---------------------------------------------------------------------------------


def test_text_file_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    _expect_rejected(path, "not a DICOM file")


def test_missing_file(tmp_path: Path) -> None:
    _expect_rejected(tmp_path / "absent.dcm", "not found")


@pytest.mark.parametrize("where", ["inside-header", "inside-pixel-data"])
def test_truncated_file(tmp_path: Path, where: str) -> None:
    data = wrap_as_ultrasound(_noise(), tmp_path / "full.dcm").read_bytes()
    # Inside the header: in the middle of the Series Description value; inside the pixels: 1000 bytes short.
    end = data.index(b"monai_ultraad synthetic") + 10 if where == "inside-header" else len(data) - 1000
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:end])
    _expect_rejected(cut, "truncated")


def test_no_pixel_data(tmp_path: Path) -> None:
    path = wrap_as_ultrasound(_noise(), tmp_path / "header_only.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    _expect_rejected(path, "no Pixel Data")


def test_ct_modality(tmp_path: Path) -> None:
    path = wrap_as_ultrasound(_noise(), tmp_path / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.save_as(path)
    _expect_rejected(path, "Modality 'CT'")


SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage


def _non_image_object(path: Path, sop_class: str = SR_STORAGE, modality: str = "SR") -> Path:
    """A minimal object of a non-image SOP class (an SR container, or a SEG header): no pixels, just identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "ANON"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if modality == "SR":
        ds.ValueType = "CONTAINER"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("sop_class", "modality", "name"),
    [(SR_STORAGE, "SR", "Comprehensive SR Storage"), (SEG_STORAGE, "SEG", "Segmentation Storage")],
    ids=["SR", "SEG"],
)
def test_non_image_objects(tmp_path: Path, sop_class: str, modality: str, name: str) -> None:
    path = _non_image_object(tmp_path / f"{modality.lower()}.dcm", sop_class, modality)
    _expect_rejected(path, name, sop_class, "not an image")


def test_bad_arguments(tmp_path: Path) -> None:
    path = wrap_as_ultrasound(_noise(), tmp_path / "ok.dcm")
    with pytest.raises(ValueError, match="frame_step"):
        read_ultrasound(path, frame_step=0)
    with pytest.raises(ValueError, match="max_frames"):
        read_ultrasound(path, max_frames=0)


def test_error_survives_pickling(tmp_path: Path) -> None:
    error = UnsupportedDicomError(tmp_path / "x.dcm", "a reason\nover two lines")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == "x.dcm: a reason over two lines" and again.path == error.path


# --- other photometric interpretations, deflated files ------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_monochrome_12_bit(tmp_path: Path, photometric: str) -> None:
    path = wrap_as_ultrasound(_noise(), tmp_path / "mono.dcm")
    ds = pydicom.dcmread(path)
    values = np.array([[0, 4095, 2048, 1000]], dtype=np.uint16).repeat(3, axis=0)
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    del ds.PlanarConfiguration, ds.SequenceOfUltrasoundRegions
    ds.PixelData = values.tobytes()
    ds.save_as(path)
    frame = read_ultrasound(path).frames[0]
    expected = np.round(values.astype(np.float64) * 255 / 4095).astype(np.uint8)
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    np.testing.assert_array_equal(frame, np.repeat(expected[..., None], 3, axis=-1))


def test_deflated_file(tmp_path: Path) -> None:
    pixels = _noise()
    path = wrap_as_ultrasound(pixels, tmp_path / "deflated.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    image = read_ultrasound(path)
    np.testing.assert_array_equal(image.frames[0], pixels)
    assert "PixelData" not in image.dataset


def test_broken_region_item_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = wrap_as_ultrasound(_noise(), tmp_path / "broken_region.dcm")
    ds = pydicom.dcmread(path)
    del ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1
    ds.save_as(path)
    with caplog.at_level("WARNING"):
        image = read_ultrasound(path)
    assert image.regions == [] and "broken_region.dcm" in caplog.text and "ANON" not in caplog.text


def test_region_properties() -> None:
    region = UltrasoundRegion(
        10,
        20,
        109,
        69,
        spatial_format=1,
        data_type=1,
        physical_units_x=3,
        physical_units_y=3,
        physical_delta_x=0.01,
        physical_delta_y=0.02,
        image_shape=(50, 100),
    )
    assert region.is_tissue
    assert region.pixel_spacing_mm == pytest.approx((0.2, 0.1))  # (row, col) = (delta_y, delta_x) x 10
    assert region.slices == (slice(20, 50), slice(10, 100))  # clipped to the 50x100 image
    assert region.area == 30 * 90
    doppler = UltrasoundRegion(
        0,
        0,
        9,
        9,
        spatial_format=1,
        data_type=2,
        physical_units_x=3,
        physical_units_y=4,
        physical_delta_x=0.01,
        physical_delta_y=0.01,
    )
    assert not doppler.is_tissue and doppler.pixel_spacing_mm is None  # y in seconds, not cm
    assert UltrasoundRegion(5, 5, 2, 2).slices == (slice(5, 5), slice(5, 5))  # inverted bounds: empty


# --- scan_folder ----------------------------------------------------------------------------------------------------


def test_scan_folder_mixed(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    outside = tmp_path / "elsewhere"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    outside.mkdir()
    good_a = wrap_as_ultrasound(_noise(), root / "a.dcm")
    good_b = wrap_as_ultrasound(None, root / "b" / "deeper" / "cine.dcm", frames=_noise(frames=3))
    wrap_as_ultrasound(_noise(), root / ".hidden.dcm")
    wrap_as_ultrasound(_noise(), root / ".cache" / "x.dcm")
    (root / "readme.txt").write_text("hello")
    _non_image_object(root / "b" / "report.dcm")
    ct = wrap_as_ultrasound(_noise(), root / "b" / "ct.dcm")
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    wrap_as_ultrasound(_noise(), outside / "secret.dcm")
    wrap_as_ultrasound(_noise(), outside / "sub" / "y.dcm")
    (root / "link_out.dcm").symlink_to(outside / "secret.dcm")
    (root / "link_dir").symlink_to(outside / "sub", target_is_directory=True)
    (root / "link_in.dcm").symlink_to(good_a)

    candidates, skipped = scan_folder(root)
    assert candidates == [good_a, good_b, root / "link_in.dcm"]
    reasons = {path.relative_to(root).as_posix(): reason for path, reason in skipped}
    assert set(reasons) == {
        ".hidden.dcm",
        ".cache",
        "readme.txt",
        "b/report.dcm",
        "b/ct.dcm",
        "link_out.dcm",
        "link_dir",
    }
    assert reasons[".hidden.dcm"] == "hidden file" and reasons[".cache"] == "hidden folder"
    assert "not a DICOM file" in reasons["readme.txt"]
    assert "SR Storage" in reasons["b/report.dcm"]
    assert "Modality 'CT'" in reasons["b/ct.dcm"]
    assert "outside the folder" in reasons["link_out.dcm"] and "not followed" in reasons["link_dir"]
    assert scan_folder(root) == (candidates, skipped)  # deterministic
    with pytest.raises(InputDataError):
        scan_folder(good_a)


@pytest.mark.realdata
def test_scan_real_folder(dicom_dir: Path) -> None:
    candidates, skipped = scan_folder(dicom_dir)
    dicom_files = sorted(dicom_dir.rglob("*.dcm"))
    assert len(candidates) == len(MANIFEST) == len(dicom_files)  # all 29, JPEG XL included
    assert not [reason for path, reason in skipped if path.name == "will-jxl.dcm"]


@pytest.mark.realdata
def test_jpeg_xl_frames_decode_in_colour_and_on_request(dicom_dir: Path) -> None:
    """dcm4che's will-jxl.dcm (JPEG XL JPEG recompression, 27 frames, YBR_FULL_422 colour Doppler): every frame
    decodes to RGB; the colour-flow pixels are coloured (red/blue), the B-mode grey; a frame subset decodes alone."""
    path = dicom_dir / JPEG_XL_FILE
    image = read_ultrasound(path)
    assert str(image.dataset.file_meta.TransferSyntaxUID) == JPEG_XL_UID
    assert image.frames.shape == (27, 708, 1016, 3)
    first = image.frames[0].astype(int)
    chroma = np.abs(first[..., 0] - first[..., 2])
    assert (chroma > 100).mean() > 0.003 and (chroma < 8).mean() > 0.9  # colour flow present; the rest grey/black
    assert not np.array_equal(image.frames[0], image.frames[13])  # a cine, not one frame repeated
    subset = read_ultrasound(path, frame_step=13)  # frames 1, 14, 27 decoded alone
    assert subset.frame_numbers == [1, 14, 27]
    np.testing.assert_array_equal(subset.frames, image.frames[[0, 13, 26]])


# --- wrap_as_ultrasound ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_wrap_real_bus_uclm_image(tmp_path: Path, uclm_image: tuple[np.ndarray, str]) -> None:
    pixels, name = uclm_image
    rows, cols, _ = pixels.shape
    path = wrap_as_ultrasound(
        pixels,
        tmp_path / "uclm.dcm",
        patient_id="SYN001",
        pixel_spacing_mm=0.08,
        region_bounds=(8, 4, cols - 9, rows - 5),
        lossy_compression_method="ISO_10918_1",
    )
    image = read_ultrasound(path)
    np.testing.assert_array_equal(image.frames[0], pixels)
    assert image.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1" and not image.is_multiframe
    assert image.dataset.PatientID == "SYN001" and image.dataset.LossyImageCompression == "01"
    (region,) = image.tissue_regions
    assert (region.x0, region.y0, region.x1, region.y1) == (8, 4, cols - 9, rows - 5)
    assert region.pixel_spacing_mm == pytest.approx((0.08, 0.08))
    if DCIODVFY is None:
        pytest.skip(f"dciodvfy not installed (apt-get install dicom3tools): round trip of {name} checked, IOD not")
    errors, _warnings = _dciodvfy(path)
    assert errors == []


@pytest.mark.parametrize("with_region", [True, False])
def test_wrap_multiframe_round_trip(tmp_path: Path, with_region: bool) -> None:
    frames = _noise(30, 40, frames=4)
    study = generate_uid()
    path = wrap_as_ultrasound(
        None, tmp_path / "cine.dcm", frames=frames, study_uid=study, with_region=with_region, laterality="L"
    )
    image = read_ultrasound(path, frame_step=2)
    np.testing.assert_array_equal(image.frames, frames[::2])
    assert image.frame_numbers == [1, 3] and image.number_of_frames == 4 and image.is_multiframe
    assert image.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1" and image.dataset.StudyInstanceUID == study
    assert len(image.regions) == int(with_region)
    if DCIODVFY is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): round trip checked, IOD not")
    errors, warnings = _dciodvfy(path)
    assert errors == [] and warnings == []  # with a known laterality dciodvfy has nothing to say


def test_wrap_rejects_bad_pixels(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="uint8"):
        wrap_as_ultrasound(np.zeros((4, 4, 3), np.float32), tmp_path / "x.dcm")
    with pytest.raises(InputDataError, match="rows, cols, 3"):
        wrap_as_ultrasound(np.zeros((4, 4), np.uint8), tmp_path / "x.dcm")
    with pytest.raises(InputDataError, match="region bounds"):
        wrap_as_ultrasound(_noise(), tmp_path / "x.dcm", region_bounds=(0, 0, 50, 39))  # x1 is inclusive: 49 max
