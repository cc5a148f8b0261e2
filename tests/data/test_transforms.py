"""Tests of the image/mask loaders, the square-pad + resize geometry and its inverse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ultraad.data.datasets import MASK_ENCODING_KEY, RGB_UCLM_ENCODING, default_data_dir, read_dataset
from monai_ultraad.data.transforms import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    PREPROCESSING_VERSION,
    ClipNormalized,
    LoadLesionMaskd,
    LoadUltrasoundImaged,
    SquarePadd,
    map_to_original,
    transform_signature,
    ultraad_preprocessing,
)
from monai_ultraad.errors import InputDataError

H, W = 10, 16


def _save(path: Path, img: Image.Image) -> str:
    img.save(path)
    return str(path)


def _load(path: str) -> torch.Tensor:
    return LoadUltrasoundImaged()({"image": path})["image"]


def _ellipse_mask(h: int, w: int, seed: int) -> np.ndarray:
    """A random filled ellipse (a lesion-like blob) inside an h x w frame."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"])
def test_load_image_modes(tmp_path: Path, mode: str) -> None:
    grey = np.tile(np.arange(W, dtype=np.uint8) * 16, (H, 1))
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)  # uint16 -> 16-bit grey PNG
    else:
        img = Image.fromarray(grey, mode="L").convert(mode)
    path = _save(tmp_path / f"img_{mode.replace(';', '')}.png", img)
    assert Image.open(path).mode.startswith(mode.split(";")[0])  # the file really has that mode
    out = LoadUltrasoundImaged()({"image": path, "id": "x"})
    image = out["image"]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert out["image_size"] == (H, W) and out["image_path"] == path and out["id"] == "x"
    if mode != "1":  # bilevel loses the ramp; every other mode keeps it (16-bit scaled by 65535)
        assert torch.allclose(image[0, 0], torch.from_numpy(grey[0] / 255.0).float(), atol=1e-3)
        assert torch.equal(image[0], image[2]) or mode in ("RGB", "RGBA", "P")


def test_load_image_rgb_keeps_colour(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    image = _load(_save(tmp_path / "c.jpg", Image.fromarray(rgb)))
    assert torch.allclose(image[:, 5, 5], torch.tensor([1.0, 0.5, 0.0]), atol=0.03)


def test_load_image_bad_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "absent.png"
    with pytest.raises(InputDataError, match=f"image file not found: {missing}"):
        _load(str(missing))

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputDataError, match=r"cannot decode image .*truncated.png: "):
        _load(str(truncated))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputDataError, match=r"cannot decode image .*garbage.png"):
        _load(str(garbage))

    cmyk = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (W, H), (0, 50, 100, 0)))
    with pytest.raises(InputDataError, match=r"cmyk.jpg has 4 channels \(mode CMYK\)"):
        _load(cmyk)

    for shape in ((H, W, 5), (5, H, W)):
        npy = tmp_path / f"five_{shape[0]}.npy"
        np.save(npy, np.zeros(shape, dtype=np.uint8))
        with pytest.raises(InputDataError, match=rf"{npy.name} has 5 channels"):
            _load(str(npy))
    npy_ok = tmp_path / "ok.npy"
    np.save(npy_ok, np.full((H, W), 65535, dtype=np.uint16))
    assert torch.allclose(_load(str(npy_ok)), torch.ones(3, H, W))

    with pytest.raises(InputDataError, match="must be an image file path"):
        LoadUltrasoundImaged()({"image": None})


# ----------------------------------------------------------------------------------------- masks
def _image_item(tmp_path: Path, h: int = H, w: int = W) -> dict:
    path = _save(tmp_path / "image.png", Image.new("L", (w, h), 90))
    return LoadUltrasoundImaged()({"image": path})


def test_load_mask_variants(tmp_path: Path) -> None:
    item = _image_item(tmp_path)
    empty = LoadLesionMaskd()(dict(item, mask=None))["mask"]
    assert empty.shape == (1, H, W) and empty.dtype == torch.float32 and float(empty.sum()) == 0

    a, b = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    a[1:3, 1:4], b[6:9, 10:14] = 255, 200
    pa = _save(tmp_path / "a_mask.png", Image.fromarray(a))
    pb = _save(tmp_path / "a_mask_1.png", Image.fromarray(b).convert("RGB"))  # grey-valued RGB accepted
    union = LoadLesionMaskd()(dict(item, mask=[pa, pb]))["mask"]
    assert set(torch.unique(union).tolist()) == {0.0, 1.0}
    assert int(union.sum()) == 6 + 12

    colour = np.zeros((H, W, 3), np.uint8)
    colour[2:4, 2:4] = (0, 255, 0)
    colour[5:6, 8:12] = (250, 10, 5)
    colour[8:9, 0:2] = (60, 60, 60)  # dark grey is not a lesion colour
    pc = _save(tmp_path / "uclm.png", Image.fromarray(colour))
    uclm = LoadLesionMaskd()(dict(item, mask=pc, **{MASK_ENCODING_KEY: RGB_UCLM_ENCODING}))["mask"]
    assert int(uclm.sum()) == 4 + 4
    with pytest.raises(InputDataError, match=r"mask .*uclm.png is a colour image"):
        LoadLesionMaskd()(dict(item, mask=pc))


def test_load_mask_errors(tmp_path: Path) -> None:
    item = _image_item(tmp_path)
    small = _save(tmp_path / "small_mask.png", Image.new("L", (W - 1, H), 0))
    with pytest.raises(InputDataError, match=rf"mask .*small_mask.png is {H}x{W - 1} .* image .*image.png is {H}x{W}"):
        LoadLesionMaskd()(dict(item, mask=small))
    with pytest.raises(InputDataError, match=r"mask file not found: .*nope.png"):
        LoadLesionMaskd()(dict(item, mask=str(tmp_path / "nope.png")))
    broken = tmp_path / "broken_mask.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputDataError, match=r"cannot decode mask .*broken_mask.png"):
        LoadLesionMaskd()(dict(item, mask=str(broken)))
    with pytest.raises(InputDataError, match="not loaded yet"):
        LoadLesionMaskd()({"mask": None})


# -------------------------------------------------------------------------------------- geometry
def test_square_pad_and_inverse(tmp_path: Path) -> None:
    item = _image_item(tmp_path)  # 10 x 16 -> pad 3 rows above, 3 below
    item = LoadLesionMaskd()(dict(item, mask=None))
    pad = SquarePadd(["image", "mask"])
    out = pad(item)
    assert out["image"].shape == (3, W, W) and out["mask"].shape == (1, W, W)
    assert float(out["image"][:, :3].abs().sum()) == 0 and float(out["image"][:, 3:13].min()) > 0
    back = pad.inverse(out)
    assert back["image"].shape == (3, H, W) and torch.allclose(back["image"], item["image"])


def test_clip_normalize() -> None:
    out = ClipNormalized()({"image": torch.ones(3, 2, 2)})["image"]
    expected = (1 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    assert torch.allclose(out[:, 0, 0], expected)
    with pytest.raises(ValueError):
        ClipNormalized(mean=(0.5, 0.5), std=(0.2, 0.2, 0.2))


def test_clip_normalize_is_open_clips_normalisation() -> None:
    """The constants and the transform are open_clip's: same numbers as the image transform open_clip builds."""
    import open_clip
    from torchvision.transforms import Normalize

    assert (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD) == (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    ours = ClipNormalized()({"image": image.clone()})["image"]  # MONAI normalises a float tensor in place
    theirs = Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)(image)
    assert torch.allclose(torch.as_tensor(ours), theirs, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), [(75, 123), (123, 75)])
def test_preprocessing_roundtrip(tmp_path: Path, h: int, w: int) -> None:
    rng = np.random.default_rng(h)
    image_path = _save(tmp_path / "us.png", Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    pre = ultraad_preprocessing(64)
    for seed in range(3):
        mask = _ellipse_mask(h, w, seed)
        mask_path = _save(tmp_path / f"m{seed}.png", Image.fromarray((mask * 255).astype(np.uint8)))
        out = pre({"image": image_path, "mask": mask_path, "id": "x"})
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (1, 64, 64) and set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0}
        assert out["image_size"] == (h, w)
        back = map_to_original(out["mask"], out["image_size"], square_size=64)
        assert back.shape == (1, h, w) and not isinstance(back, type(out["mask"]))
        assert _iou(back[0].numpy() > 0.5, mask) > 0.9
    # Compose.inverse undoes the geometry of the traced tensors too.
    inverted = pre.inverse({"image": out["image"], "mask": out["mask"]})
    assert inverted["image"].shape == (3, h, w) and inverted["mask"].shape == (1, h, w)
    assert _iou(inverted["mask"][0].numpy() > 0.5, mask) > 0.9


@pytest.mark.parametrize(("h", "w"), [(75, 123), (123, 75), (300, 41)])
def test_map_to_original_equals_monai_inverse(tmp_path: Path, h: int, w: int) -> None:
    """map_to_original is pinned against MONAI's own inverse of the traced preprocessing (Compose.inverse)."""
    rng = np.random.default_rng(w)
    path = _save(tmp_path / "us.png", Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    pre = ultraad_preprocessing(64, with_mask=False)
    out = pre({"image": path})
    theirs = torch.as_tensor(pre.inverse({"image": out["image"]})["image"])
    ours = map_to_original(out["image"].as_tensor(), (h, w))
    assert ours.shape == theirs.shape == (3, h, w)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_preprocessing_without_mask_and_map_errors(tmp_path: Path) -> None:
    path = _save(tmp_path / "g.png", Image.new("L", (20, 12), 128))
    out = ultraad_preprocessing(24, with_mask=False)({"image": path})
    assert "mask" not in out and out["image"].shape == (3, 24, 24)
    assert map_to_original(torch.zeros(24, 24), (12, 20)).shape == (12, 20)
    with pytest.raises(ValueError, match="square_size"):
        map_to_original(torch.zeros(1, 24, 24), (12, 20), square_size=32)
    with pytest.raises(ValueError, match="must be"):
        map_to_original(torch.zeros(1, 24, 20), (12, 20))


def test_transform_signature() -> None:
    sig = transform_signature(224)
    assert sig == transform_signature(224, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert f"v{PREPROCESSING_VERSION}" in sig and "224" in sig and len(sig) < 48
    assert transform_signature(336) != sig
    assert transform_signature(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) != sig


# -------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["bus_uclm", "bus_bra"])
def test_real_preprocessing(name: str) -> None:
    root = default_data_dir()
    if root is None or not (root / name / "labels.csv").is_file():
        pytest.skip(f"real data {name}/labels.csv not found (set $ULTRAAD_DATA_DIR or provide ../shared/data)")
    items = read_dataset(root / name)
    picked = [
        next(it for it in items if it["label_name"] == cls)
        for cls in ("normal", "benign", "malignant")
        if any(it["label_name"] == cls for it in items)
    ]
    pre = ultraad_preprocessing(224)
    for item in picked:
        out = pre(item)
        assert out["image"].shape == (3, 224, 224) and out["mask"].shape == (1, 224, 224)
        assert torch.isfinite(out["image"]).all()
        has_lesion = bool(out["mask"].sum() > 0)
        assert has_lesion == (item["label_name"] != "normal"), item["id"]
        back = map_to_original(out["mask"], out["image_size"], 224)[0].numpy() > 0.5
        original = np.asarray(Image.open(item["mask"])) > 127
        assert back.shape == original.shape and (not original.any() or _iou(back, original) > 0.8)
