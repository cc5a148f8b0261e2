"""MONAI dictionary transforms that load, square-pad, resize and CLIP-normalise ultrasound images.

The geometry is deliberately simple and invertible: zero-pad symmetrically to a square (so the
aspect ratio survives), then resize to ``S x S``. :func:`map_to_original` undoes it for a heatmap
without needing MONAI's trace, and :func:`transform_signature` names it for feature caches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    InvertibleTransform,
    MapTransform,
    NormalizeIntensityd,
    Pad,
    Resized,
)
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # CLIP's normalisation
from PIL import Image

from monai_ultraad.constants import IMAGE_KEY, MASK_KEY
from monai_ultraad.data.datasets import MASK_ENCODING_KEY, RGB_UCLM_ENCODING, uclm_lesion_colours
from monai_ultraad.errors import InputDataError, UltraADError

__all__ = [
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "PREPROCESSING_VERSION",
    "ClipNormalized",
    "LoadLesionMaskd",
    "LoadUltrasoundImaged",
    "SquarePadd",
    "apply_pipeline",
    "load_image_array",
    "load_mask_array",
    "map_to_original",
    "square_padding",
    "transform_signature",
    "ultraad_array_preprocessing",
    "ultraad_preprocessing",
]


#: Bump whenever the output of :func:`ultraad_preprocessing` changes, so cached features are recomputed.
PREPROCESSING_VERSION = 1

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------- decoding
def _check_exists(path: PathLike, what: str) -> Path:
    if path is None or (isinstance(path, str) and not path):
        raise InputDataError(f"no {what} path given")
    file = Path(path)
    if not file.is_file():
        raise InputDataError(f"{what} file not found: {file}")
    return file


def _open_pil(file: Path, what: str) -> Image.Image:
    """Open and fully decode ``file`` (Image.open is lazy: truncation only shows on load)."""
    try:
        img = Image.open(file)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputDataError(f"cannot decode {what} {file}: {err}") from err
    if getattr(img, "n_frames", 1) > 1:
        # A multi-page TIFF or animation is a stack, not one 2D ultrasound frame.
        raise InputDataError(f"{what} {file} has {img.n_frames} frames/pages; expected a single 2D image")
    return img


def _load_npy(file: Path, what: str) -> np.ndarray:
    """Load a .npy array as (H, W) or channel-last (H, W, C).

    A 3D array whose first axis is shorter than its last is taken as channel-first and moved to
    channel-last, so both (C, H, W) and (H, W, C) layouts work and report their channel count.
    """
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputDataError(f"cannot decode {what} {file}: {err}") from err
    if arr.ndim == 3 and arr.shape[0] < arr.shape[-1]:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise InputDataError(f"{what} {file} has shape {arr.shape}; expected (H, W) or (H, W, C)")
    return arr


def _scale_unit(arr: np.ndarray, file: Path) -> np.ndarray:
    """Scale an integer/float array to float32 [0, 1] by its dtype's range."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit (and 32-bit PIL "I" holding 16-bit data) is scaled by 65535; 8-bit-range ints by 255.
        scale = 255.0 if arr.dtype.itemsize == 1 else 65535.0
        return np.clip(arr.astype(np.float32) / scale, 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < -1e-3 or out.max() > 1.0 + 1e-3:
            raise InputDataError(
                f"image {file} holds floats outside [0, 1] (min {np.nanmin(out):.4g}, max {np.nanmax(out):.4g}); "
                "store 8/16-bit integers or floats in [0, 1]"
            )
        return np.clip(out, 0.0, 1.0)
    raise InputDataError(f"image {file} has unsupported data type {arr.dtype}")


def _channels_to_rgb(arr: np.ndarray, file: Path, mode: str = "") -> np.ndarray:
    """(H, W[, C]) float array -> (H, W, 3): grey replicated, alpha dropped, other counts rejected."""
    if arr.ndim == 2:
        arr = arr[..., None]
    n = arr.shape[-1]
    if n in (1, 2):  # grey (+ alpha)
        return np.repeat(arr[..., :1], 3, axis=-1)
    if n in (3, 4):  # RGB (+ alpha)
        return arr[..., :3]
    mode_text = f" (mode {mode})" if mode else ""
    raise InputDataError(
        f"image {file} has {n} channels{mode_text}; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)"
    )


_GREY_MODES = {"1", "L", "LA", "La"}
_RGB_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "YCbCr", "P", "PA"}


def load_image_array(path: PathLike) -> np.ndarray:
    """Decode an image file into a float32 (H, W, 3) array in [0, 1].

    PNG/JPEG/BMP/TIFF go through PIL: grey, grey+alpha, palette, RGB(A) and 16-bit grey are
    accepted (grey replicated to 3 channels, alpha dropped, 16-bit divided by 65535). ``.npy``
    arrays (uint8, uint16, bool or floats in [0, 1]) with 1-4 channels are accepted too.

    Raises:
        InputDataError: ``image file not found: <path>``, ``cannot decode image <path>: <reason>``,
            or a channel count / colour mode that is not one of the above (message names the file).
    """
    file = _check_exists(path, "image")
    if file.suffix.lower() == ".npy":
        return _channels_to_rgb(_scale_unit(_load_npy(file, "image"), file), file)
    img = _open_pil(file, "image")
    mode = img.mode
    if mode in _GREY_MODES:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    elif mode in _RGB_MODES:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        arr = _scale_unit(np.asarray(img).astype(np.int64 if mode == "I" else np.uint16), file)
    elif mode == "F":
        arr = _scale_unit(np.asarray(img, dtype=np.float32), file)
    else:
        bands = len(img.getbands())
        raise InputDataError(
            f"image {file} has {bands} channels (mode {mode}); expected grey, grey+alpha, palette, RGB or RGBA"
        )
    return _channels_to_rgb(arr, file, mode)


def load_mask_array(path: PathLike, encoding: str | None = None) -> np.ndarray:
    """Decode a lesion-mask file into a boolean (H, W) array (True = lesion).

    * ``encoding="rgb_uclm"``: original BUS-UCLM colour masks, lesion where clearly green or red.
    * otherwise single-channel masks (``1``, ``L``, palette, 16-bit): lesion where the 8-bit grey
      value is > 127 (16-bit values are divided by 257 first); grey+alpha uses its grey band;
      RGB/RGBA masks are accepted when grey-valued (first channel used) and rejected when coloured.
    * ``.npy``: bool as is, floats > 0.5, integers > 127 (or > 0 when the maximum is 1).

    Raises:
        InputDataError: missing/undecodable file, coloured mask without ``rgb_uclm``, or more than one
            channel in a ``.npy`` mask (messages name the file).
    """
    file = _check_exists(path, "mask")
    if file.suffix.lower() == ".npy":
        arr = _load_npy(file, "mask")
        if arr.ndim == 3 and arr.shape[-1] != 1:
            raise InputDataError(f"mask {file} has {arr.shape[-1]} channels; expected 1")
        arr = arr.reshape(arr.shape[:2])
        if arr.dtype == np.bool_:
            return arr
        if np.issubdtype(arr.dtype, np.floating):
            return arr > 0.5
        return arr > (0 if arr.max(initial=0) <= 1 else 127)
    img = _open_pil(file, "mask")
    mode = img.mode
    if encoding == RGB_UCLM_ENCODING:
        green, red = uclm_lesion_colours(np.asarray(img.convert("RGB")))
        return green | red
    if encoding not in (None, ""):
        raise InputDataError(f"mask {file}: unknown mask_encoding {encoding!r}; expected None or {RGB_UCLM_ENCODING!r}")
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L")) > 127
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(img).astype(np.int64) / 257.0 > 127
    if mode == "F":
        return np.asarray(img, dtype=np.float32) > 0.5
    if mode in _RGB_MODES:
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        # Tolerate small channel differences from lossy compression, but not a colour code.
        if np.abs(rgb - rgb[..., :1]).max() > 16:
            raise InputDataError(
                f"mask {file} is a colour image (channels differ); expected a grey 0/255 mask "
                f"(or set mask_encoding='{RGB_UCLM_ENCODING}' for BUS-UCLM colour masks)"
            )
        return rgb[..., 0] > 127
    raise InputDataError(f"mask {file} has {len(img.getbands())} channels (mode {mode}); expected a grey mask")


def _meta_tensor(arr: np.ndarray, path: str) -> MetaTensor:
    """Channel-first float32 MetaTensor with a 2D affine, so MONAI spatial transforms can trace it."""
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    meta = {"filename_or_obj": path, "spatial_shape": np.asarray(tensor.shape[1:]), "original_channel_dim": 0}
    return MetaTensor(tensor, affine=torch.eye(3, dtype=torch.float64), meta=meta)


# -------------------------------------------------------------------------------------- transforms
class LoadUltrasoundImaged(MapTransform):
    """Load image files into float32 channel-first (3, H, W) tensors in [0, 1].

    For each key, the file path is replaced by a :class:`~monai.data.MetaTensor`; the path is kept
    under ``"<key>_path"`` and the original size ``(H, W)`` under ``"<key>_size"`` (``image_path``
    and ``image_size`` for the default key). See :func:`load_image_array` for the accepted formats
    and the :class:`InputDataError` messages.
    """

    def __init__(self, keys: KeysCollection = IMAGE_KEY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise InputDataError(f"'{key}' must be an image file path, got {type(path).__name__}")
            arr = load_image_array(path)
            d[key] = _meta_tensor(arr.transpose(2, 0, 1), str(path))
            d[f"{key}_path"] = str(path)
            d[f"{key}_size"] = (int(arr.shape[0]), int(arr.shape[1]))
        return d


class LoadLesionMaskd(MapTransform):
    """Load lesion masks into float32 (1, H, W) tensors in {0, 1}, the size of the reference image.

    The value under each key may be a path, a list of paths (their union is taken, e.g. BUSI's
    ``_mask_1`` files) or ``None``/missing (an all-zero mask, e.g. for normal images). The item's
    ``"mask_encoding"`` selects the decoding (see :func:`load_mask_array`). Run it after
    :class:`LoadUltrasoundImaged`: the size is checked against ``"<ref_key>_size"`` (or the loaded
    reference tensor).

    Raises:
        InputDataError: the mask size differs from the image (both files and sizes named), or any
            decoding error.
    """

    def __init__(
        self, keys: KeysCollection = MASK_KEY, ref_key: str = IMAGE_KEY, encoding_key: str = MASK_ENCODING_KEY
    ) -> None:
        # Missing keys are legitimate here (no mask = normal), so they never raise.
        super().__init__(keys, allow_missing_keys=True)
        self.ref_key = ref_key
        self.encoding_key = encoding_key

    def _reference_size(self, d: Mapping[Hashable, Any]) -> tuple[int, int]:
        size = d.get(f"{self.ref_key}_size")
        if size is not None:
            return int(size[0]), int(size[1])
        ref = d.get(self.ref_key)
        if isinstance(ref, (torch.Tensor, np.ndarray)):
            return int(ref.shape[-2]), int(ref.shape[-1])
        raise InputDataError(
            f"cannot size the mask: '{self.ref_key}' is not loaded yet (run LoadUltrasoundImaged first)"
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        height, width = self._reference_size(d)
        image_path = d.get(f"{self.ref_key}_path", "<image>")
        encoding = d.get(self.encoding_key)
        for key in self.keys:
            value = d.get(key)
            paths = [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else list(value)
            union = np.zeros((height, width), dtype=bool)
            for path in paths:
                mask = load_mask_array(path, encoding)
                if mask.shape != (height, width):
                    raise InputDataError(
                        f"mask {path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {image_path} is "
                        f"{height}x{width}"
                    )
                union |= mask
            d[key] = _meta_tensor(union[None].astype(np.float32), str(paths[0]) if paths else "")
        return d


def square_padding(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding that makes an HxW image square, split as MONAI's
    symmetric ``SpatialPad`` does (the odd pixel goes after)."""
    side = max(height, width)
    dh, dw = side - height, side - width
    return (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)


class SquarePadd(MapTransform, InvertibleTransform):
    """Zero-pad each key's (C, H, W) tensor symmetrically to (C, S, S) with S = max(H, W); invertible.

    The padding is recorded in the MetaTensor's ``applied_operations`` by MONAI's :class:`Pad`, so
    ``Compose.inverse`` (or :meth:`inverse`) crops it away again.
    """

    def __init__(self, keys: KeysCollection, mode: str = "constant", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.padder = Pad(mode=mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            (top, bottom), (left, right) = square_padding(int(d[key].shape[-2]), int(d[key].shape[-1]))
            d[key] = self.padder(d[key], to_pad=[(0, 0), (top, bottom), (left, right)])
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.padder.inverse(d[key])
        return d


class ClipNormalized(NormalizeIntensityd):
    """CLIP's per-channel normalisation ``(x - mean) / std`` of (3, H, W) images in [0, 1]: MONAI's
    :class:`~monai.transforms.NormalizeIntensityd` (channel-wise) with open_clip's OpenAI mean and std as defaults."""

    def __init__(
        self,
        keys: KeysCollection = IMAGE_KEY,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        allow_missing_keys: bool = False,
    ) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have equal length and std > 0, got {mean} and {std}")
        super().__init__(keys, subtrahend=list(mean), divisor=list(std), channel_wise=True,
                         allow_missing_keys=allow_missing_keys)


def ultraad_preprocessing(
    image_size: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    with_mask: bool = True,
) -> Compose:
    """The UltraAD input pipeline: load, square-pad, resize to ``image_size``, CLIP-normalise.

    Output: ``"image"`` float32 (3, S, S); with ``with_mask`` also ``"mask"`` float32 (1, S, S) in
    {0, 1}; plus ``"image_size"`` (original H, W) and ``"image_path"``. The geometry is invertible
    with ``Compose.inverse`` and, for heatmaps, with :func:`map_to_original`.
    """
    keys = [IMAGE_KEY, MASK_KEY] if with_mask else [IMAGE_KEY]
    size = (int(image_size), int(image_size))
    transforms: list[Any] = [LoadUltrasoundImaged(IMAGE_KEY)]
    if with_mask:
        transforms.append(LoadLesionMaskd(MASK_KEY, ref_key=IMAGE_KEY))
    transforms += [
        SquarePadd(keys),
        # Anti-aliasing only acts when shrinking; it avoids moire on speckle when S < max(H, W).
        Resized(IMAGE_KEY, size, mode="bilinear", align_corners=False, anti_aliasing=True),
    ]
    if with_mask:
        # Bilinear + threshold keeps lesion boundaries where they are, instead of nearest's pixel jumps.
        transforms += [
            Resized(MASK_KEY, size, mode="bilinear", align_corners=False),
            AsDiscreted(MASK_KEY, threshold=0.5),
        ]
    transforms += [ClipNormalized(IMAGE_KEY, mean, std), EnsureTyped(keys, dtype=torch.float32)]
    return Compose(transforms)


def map_to_original(
    heatmap: torch.Tensor | np.ndarray, image_size: Sequence[int], square_size: int | None = None
) -> torch.Tensor:
    """Map an (S, S) or (C, S, S) map at network resolution back onto the original HxW image.

    Undoes :func:`ultraad_preprocessing`'s geometry: bilinear resize to the padded side max(H, W),
    then crop the symmetric padding. Returns a plain float tensor of shape (H, W) or (C, H, W).

    Kept beside MONAI's ``Compose.inverse`` / ``Invertd``, which give the same values (a test pins them equal):
    those need the image's traced operations attached to each map, which a batched network output and the
    predictor's analysis windows do not carry; this needs only the original size.

    Args:
        heatmap: the map; a MetaTensor's trace is ignored.
        image_size: original (H, W), e.g. the item's ``"image_size"``.
        square_size: the network side S; when given it is checked against the heatmap.

    Raises:
        ValueError: heatmap not 2D/3D, not square, or not ``square_size``.
    """
    x = heatmap.as_tensor() if isinstance(heatmap, MetaTensor) else torch.as_tensor(heatmap)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"heatmap must be (S, S) or (C, S, S), got shape {tuple(heatmap.shape)}")
    if square_size is not None and x.shape[-1] != int(square_size):
        raise ValueError(f"heatmap side {x.shape[-1]} does not match square_size {square_size}")
    height, width = int(image_size[0]), int(image_size[1])
    side = max(height, width)
    x = F.interpolate(x[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]
    (top, _), (left, _) = square_padding(height, width)
    x = x[:, top : top + height, left : left + width]
    return x[0] if squeeze else x


def transform_signature(
    image_size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN, std: Sequence[float] = OPENAI_DATASET_STD
) -> str:
    """Short stable id of the preprocessing, e.g. ``ultraad-pre-v1-224-3f2a9c1b0d`` (for cache keys).

    The hash covers the version, size, geometry choices and the normalisation constants (rounded to
    8 decimals so float noise does not change it).
    """
    spec = {
        "version": PREPROCESSING_VERSION,
        "size": int(image_size),
        "geometry": "square-pad-zero-symmetric+resize-bilinear-aa",
        "mean": [round(float(m), 8) for m in mean],
        "std": [round(float(s), 8) for s in std],
    }
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"ultraad-pre-v{PREPROCESSING_VERSION}-{int(image_size)}-{digest}"


def apply_pipeline(transform: Callable[[dict], dict], data: Mapping[Hashable, Any]) -> dict:
    """Apply a MONAI pipeline, surfacing this package's own input errors unwrapped.

    MONAI's ``Compose`` wraps every exception in ``RuntimeError("applying transform ...")``; the user should instead see
    the :class:`~monai_ultraad.errors.InputDataError` that names the file and the problem.
    """
    try:
        return transform(dict(data))
    except RuntimeError as exc:
        cause = exc
        while cause is not None and not isinstance(cause, UltraADError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def ultraad_array_preprocessing(
    image_size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN, std: Sequence[float] = OPENAI_DATASET_STD
) -> Compose:
    """The geometry and normalisation of :func:`ultraad_preprocessing` for images already in memory.

    Input ``{"image": float32 (3, H, W) in [0, 1]}`` (e.g. a decoded DICOM frame / 255); output as
    :func:`ultraad_preprocessing` without loading. Both paths share these transforms, so a PNG and the same pixels
    wrapped in DICOM give the same model input.
    """
    size = (int(image_size), int(image_size))
    return Compose(
        [
            SquarePadd(IMAGE_KEY),
            Resized(IMAGE_KEY, size, mode="bilinear", align_corners=False, anti_aliasing=True),
            ClipNormalized(IMAGE_KEY, mean, std),
            EnsureTyped(IMAGE_KEY, dtype=torch.float32),
        ]
    )
