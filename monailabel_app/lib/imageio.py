"""Read the images MONAI Label hands the app (PNG/JPEG/NIfTI/NRRD, incl. NIfTI converted from DICOM) and
write/read lesion labels in the same geometry, so 3D Slicer overlays them on the image.

Everything goes through SimpleITK: it reads what the datastores store (the DICOMweb datastore converts DICOM to
NIfTI with SimpleITK/GDCM), and copying the image's origin/spacing/direction onto the label keeps Slicer's overlay
aligned. Ultrasound from GDCM arrives as (cols, rows, frames) with 1 or 3 components; palette colour is expanded to
RGB (8 or 16 bit) by GDCM.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_ultraad.errors import InputDataError

#: Label values: 0 background; a lesion pixel carries its image class (the app's MONAI Label labels).
LABELS = {"benign": 1, "malignant": 2}


@dataclass
class UltrasoundPicture:
    """One 2D ultrasound frame as the model wants it, plus the SimpleITK image whose geometry labels copy."""

    rgb: np.ndarray  # (rows, cols, 3) uint8
    reference: sitk.Image  # as read (vector or scalar, 2D or 3D with one slice)


def read_picture(path: str | os.PathLike) -> UltrasoundPicture:
    """Read a single-frame image as RGB uint8.

    Raises:
        InputDataError: unreadable file, more than one frame (a cine loop), or an unsupported channel count; the
            message names the file.
    """
    name = Path(path).name
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputDataError(f"cannot read image {name}: {reason}") from None
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] != 1:
        raise InputDataError(
            f"image {name} has {size[2]} frames (a cine loop or a volume); the MONAI Label app analyses single 2D "
            "ultrasound images: use the deploy app (python deploy_app) for cine loops"
        )
    if image.GetDimension() not in (2, 3):
        raise InputDataError(f"image {name} has {image.GetDimension()} dimensions; expected a 2D image")
    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 3:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise InputDataError(f"image {name} has {channels} channels; expected grey, RGB or RGBA")
    arr = arr[..., :1] if channels in (1, 2) else arr[..., :3]
    if arr.dtype == np.uint8:
        rgb = arr
    elif np.issubdtype(arr.dtype, np.integer):
        top = 255 if arr.max(initial=0) <= 255 else 65535  # 16-bit palette colour from GDCM uses the full range
        rgb = np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    else:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        rgb = np.clip((np.nan_to_num(arr) - lo) * scale, 0, 255).round().astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return UltrasoundPicture(np.ascontiguousarray(rgb), image)


def _scalar_like(values: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A 3D (cols, rows, 1) scalar image of ``values`` (rows, cols) in the reference's geometry.

    Always 3D: 3D Slicer 5.12's MONAI Label module reads the label with SimpleITK and hands it to
    ``sitkUtils.PushVolumeToSlicer``, which indexes a 3x3 direction and three spacings (a 2D image raises
    IndexError there, "Failed to run inference"). A 2D reference (PNG/JPEG) is extended the way Slicer extends it when
    it loads the image: z origin 0, z spacing 1, z direction (0, 0, 1).
    """
    out = sitk.GetImageFromArray(np.ascontiguousarray(values[None]), isVector=False)
    if reference.GetDimension() == 3:
        out.SetOrigin(reference.GetOrigin())
        out.SetSpacing(reference.GetSpacing())
        out.SetDirection(reference.GetDirection())
    else:
        (ox, oy), (sx, sy), (d00, d01, d10, d11) = reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection()
        out.SetOrigin((ox, oy, 0.0))
        out.SetSpacing((sx, sy, 1.0))
        out.SetDirection((d00, d01, 0.0, d10, d11, 0.0, 0.0, 0.0, 1.0))
    return out


def write_label(values: np.ndarray, reference: sitk.Image, suffix: str = ".nii.gz") -> str:
    """Write a uint8 (rows, cols) label into a new temporary file (MONAI Label deletes it after sending)."""
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="ultraad_label_")
    os.close(fd)
    sitk.WriteImage(_scalar_like(values.astype(np.uint8), reference), name, useCompression=True)
    return name


def read_label(path: str | os.PathLike, shape: tuple[int, int], name: str | None = None) -> np.ndarray:
    """Read an uploaded label as (rows, cols) uint8 and check it against the image's (rows, cols).

    Raises:
        InputDataError: unreadable, another size, several frames, or values other than 0/1/2 (``name``, default the
            file name, says which label).
    """
    name = name or Path(path).name
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputDataError(f"label {name} is not a readable image file: {reason}") from None
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(f"label {name} has {label.GetNumberOfComponentsPerPixel()} components; expected a labelmap")
    arr = sitk.GetArrayFromImage(label)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise InputDataError(f"label {name} is {arr.shape} (rows, cols) but its image is {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise InputDataError(f"label {name} holds NaN or infinite values")
    values = set(np.unique(arr).astype(int).tolist())
    if not values <= {0, *LABELS.values()}:
        raise InputDataError(
            f"label {name} holds values {sorted(values)}; expected 0 (background), 1 (benign lesion) or 2 (malignant lesion)"
        )
    return arr.astype(np.uint8)
