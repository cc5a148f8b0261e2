"""Tests of the dataset readers on tiny synthetic layouts and (marked ``realdata``) on shared/data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_ultraad.constants import CLASS_NAMES, DATA_DIR_ENV
from monai_ultraad.data.datasets import (
    MASK_ENCODING_KEY,
    RGB_UCLM_ENCODING,
    default_data_dir,
    read_bus_bra_original,
    read_bus_uclm_original,
    read_busi_folder,
    read_datalist,
    read_dataset,
    read_labels_csv,
)
from monai_ultraad.errors import InputDataError

BLACK, GREEN, RED = (0, 0, 0), (0, 255, 0), (255, 0, 0)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _grey(h: int = 8, w: int = 12) -> np.ndarray:
    return np.full((h, w), 100, dtype=np.uint8)


def _colour_mask(colour: tuple[int, int, int] | None, second: tuple[int, int, int] | None = None) -> np.ndarray:
    """An 8x12 RGB BUS-UCLM-style mask: black with an optional coloured blob (and a second one)."""
    mask = np.zeros((8, 12, 3), dtype=np.uint8)
    if colour is not None:
        mask[2:5, 3:7] = colour
    if second is not None:
        mask[6:8, 9:12] = second
    return mask


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture()
def labels_root(tmp_path: Path) -> Path:
    """shared/data-like layout with 3 images of 2 patients."""
    root = tmp_path / "ds"
    for name in ("a_000", "a_001", "b_000"):
        _png(root / "images" / f"{name}.png", _grey())
        _png(root / "masks" / f"{name}.png", np.zeros((8, 12)))
    (root / "labels.csv").write_text(
        "image,mask,label,patient,device\n"
        "images/a_000.png,masks/a_000.png,benign,A,GE\n"
        "images/a_001.png,,normal,A,GE\n"
        "images/b_000.png,masks/b_000.png,Malignant,B,Toshiba\n"
    )
    return root


@pytest.fixture()
def busi_root(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset_BUSI_with_GT"
    _png(root / "normal" / "normal (1).png", _grey())
    _png(root / "normal" / "normal (1)_mask.png", np.zeros((8, 12)))
    _png(root / "benign" / "benign (1).png", _grey())
    _png(root / "benign" / "benign (1)_mask.png", np.zeros((8, 12)))
    _png(root / "benign" / "benign (1)_mask_1.png", np.zeros((8, 12)))
    _png(root / "benign" / "benign (2).png", _grey())
    _png(root / "benign" / "benign (2)_mask.png", np.zeros((8, 12)))
    _png(root / "malignant" / "malignant (1).png", _grey())
    _png(root / "malignant" / "malignant (1)_mask.png", np.zeros((8, 12)))
    return root


@pytest.fixture()
def uclm_root(tmp_path: Path) -> Path:
    root = tmp_path / "BUS-UCLM"
    for name, colour in (("ALWI_000", GREEN), ("ALWI_001", None), ("SIBA_000", RED)):
        _png(root / "images" / f"{name}.png", _grey())
        _png(root / "masks" / f"{name}.png", _colour_mask(colour))
    return root


@pytest.fixture()
def bra_root(tmp_path: Path) -> Path:
    root = tmp_path / "BUSBRA"
    for case in ("0001-l", "0001-r", "0002-s"):
        _png(root / "Images" / f"bus_{case}.png", _grey())
        _png(root / "Masks" / f"mask_{case}.png", np.zeros((8, 12)))
    (root / "bus_data.csv").write_text(
        "ID,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"
        'bus_0001-l,fibroadenoma,benign,3,GE Logiq 7,12,8,left,"[1, 2, 3, 4]"\n'
        'bus_0001-r,fibroadenoma,benign,3,GE Logiq 7,12,8,right,"[1, 2, 3, 4]"\n'
        'bus_0002-s,invasive ductal carcinoma,malignant,5,Toshiba,12,8,left,"[1, 2, 3, 4]"\n'
    )
    return root


# -------------------------------------------------------------------------------------- labels.csv
def test_read_labels_csv_items(labels_root: Path) -> None:
    items = read_labels_csv(labels_root)
    assert [it["id"] for it in items] == ["images/a_000", "images/a_001", "images/b_000"]
    first, normal, malignant = items
    assert first["image"] == str((labels_root / "images/a_000.png").resolve())
    assert Path(first["image"]).is_absolute() and Path(first["mask"]).is_file()
    assert (first["label"], first["label_name"], first["patient"], first["device"]) == (1, "benign", "A", "GE")
    assert normal["mask"] is None and normal["label"] == 0
    assert malignant["label"] == CLASS_NAMES.index("malignant")  # class names are case-insensitive
    assert read_dataset(labels_root) == items
    assert read_dataset(labels_root / "labels.csv") == items


def test_read_labels_csv_missing_root_and_csv(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="dataset root not found"):
        read_labels_csv(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="labels.csv"):
        read_labels_csv(tmp_path / "empty")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("images/a_000.png,masks/a_000.png,cyst,A,GE", r"labels.csv row 2: unknown class 'cyst'"),
        ("images/zz.png,masks/a_000.png,benign,A,GE", r"labels.csv row 2: image file not found: .*zz.png"),
        ("images/a_001.png,masks/zz.png,benign,A,GE", r"labels.csv row 2: mask file not found: .*zz.png"),
        ("images/a_000.png,,benign,A,GE", r"duplicate id 'images/a_000'"),
        ("images/a_001.png,,7,A,GE", r"row 2: class index 7 out of range"),
    ],
)
def test_read_labels_csv_bad_rows(labels_root: Path, row: str, expected: str) -> None:
    (labels_root / "labels.csv").write_text(
        "image,mask,label,patient,device\nimages/a_000.png,masks/a_000.png,benign,A,GE\n" + row + "\n"
    )
    with pytest.raises(InputDataError, match=expected):
        read_labels_csv(labels_root)


def test_read_labels_csv_empty_and_missing_column(labels_root: Path) -> None:
    (labels_root / "labels.csv").write_text("image,mask,label,patient\n")
    with pytest.raises(InputDataError, match=r"labels.csv: dataset is empty"):
        read_labels_csv(labels_root)
    (labels_root / "labels.csv").write_text("image,mask,patient\nimages/a_000.png,,A\n")
    with pytest.raises(InputDataError, match=r"labels.csv: missing column\(s\) \['label'\]"):
        read_labels_csv(labels_root)


# ---------------------------------------------------------------------------------------------- BUSI
def test_read_busi_folder(busi_root: Path) -> None:
    items = read_busi_folder(busi_root)
    by_id = {it["id"]: it for it in items}
    assert [it["label_name"] for it in items] == ["normal", "benign", "benign", "malignant"]
    multi = by_id["benign/benign (1)"]
    assert isinstance(multi["mask"], list) and [Path(m).name for m in multi["mask"]] == [
        "benign (1)_mask.png",
        "benign (1)_mask_1.png",
    ]
    assert Path(by_id["benign/benign (2)"]["mask"]).name == "benign (2)_mask.png"
    assert all(it["patient"] == it["id"] for it in items)  # BUSI has no patient ids
    assert read_dataset(busi_root) == items


def test_read_busi_folder_errors(busi_root: Path, tmp_path: Path) -> None:
    (busi_root / "malignant" / "malignant (1)_mask.png").unlink()
    with pytest.raises(InputDataError, match=r"malignant \(1\).png: malignant image has no mask"):
        read_busi_folder(busi_root)
    _png(busi_root / "malignant" / "malignant (1)_mask.png", np.zeros((8, 12)))
    _png(busi_root / "benign" / "benign (9)_mask.png", np.zeros((8, 12)))
    with pytest.raises(InputDataError, match=r"benign \(9\)_mask.png: mask without image"):
        read_busi_folder(busi_root)
    (tmp_path / "other").mkdir()
    with pytest.raises(InputDataError, match="no class folder"):
        read_busi_folder(tmp_path / "other")


# ------------------------------------------------------------------------------ original BUS-UCLM
def test_read_bus_uclm_original(uclm_root: Path) -> None:
    items = read_bus_uclm_original(uclm_root)
    assert [(it["id"], it["label_name"], it["patient"]) for it in items] == [
        ("images/ALWI_000", "benign", "ALWI"),
        ("images/ALWI_001", "normal", "ALWI"),
        ("images/SIBA_000", "malignant", "SIBA"),
    ]
    assert all(it[MASK_ENCODING_KEY] == RGB_UCLM_ENCODING for it in items)
    assert read_dataset(uclm_root) == items


def test_read_bus_uclm_original_bad_masks(uclm_root: Path) -> None:
    _png(uclm_root / "masks" / "SIBA_000.png", _colour_mask(RED, GREEN))
    with pytest.raises(InputDataError, match=r"SIBA_000.png: mask has both green"):
        read_bus_uclm_original(uclm_root)
    (uclm_root / "masks" / "SIBA_000.png").write_bytes(b"not a png")
    with pytest.raises(InputDataError, match=r"cannot decode mask .*SIBA_000.png"):
        read_bus_uclm_original(uclm_root)
    _png(uclm_root / "masks" / "SIBA_000.png", np.full((8, 12), 255))  # white: not the colour code
    with pytest.raises(InputDataError, match=r"SIBA_000.png: mask has bright pixels"):
        read_bus_uclm_original(uclm_root)
    (uclm_root / "masks" / "SIBA_000.png").unlink()
    with pytest.raises(InputDataError, match=r"SIBA_000.png: no mask"):
        read_bus_uclm_original(uclm_root)


# ------------------------------------------------------------------------------- original BUS-BRA
def test_read_bus_bra_original(bra_root: Path) -> None:
    items = read_bus_bra_original(bra_root)
    assert [(it["id"], it["label_name"], it["patient"]) for it in items] == [
        ("Images/bus_0001-l", "benign", "0001"),
        ("Images/bus_0001-r", "benign", "0001"),
        ("Images/bus_0002-s", "malignant", "0002"),
    ]
    assert Path(items[0]["mask"]).name == "mask_0001-l.png"
    assert (items[2]["birads"], items[2]["device"], items[2]["bbox"]) == ("5", "Toshiba", "[1, 2, 3, 4]")
    assert read_dataset(bra_root) == items


def test_read_bus_bra_original_errors(bra_root: Path) -> None:
    (bra_root / "Masks" / "mask_0002-s.png").unlink()
    with pytest.raises(InputDataError, match=r"bus_data.csv row 3: mask file not found: .*mask_0002-s.png"):
        read_bus_bra_original(bra_root)
    text = (bra_root / "bus_data.csv").read_text().replace("malignant", "unknown")
    (bra_root / "bus_data.csv").write_text(text)
    with pytest.raises(InputDataError, match=r"row 3: unknown class 'unknown'"):
        read_bus_bra_original(bra_root)


# ---------------------------------------------------------------------------------------- datalist
def test_read_datalist(busi_root: Path) -> None:
    # The JSON sits next to folders named like classes: "class": "benign" must stay a class name.
    datalist = {
        "training": [
            {
                "image": "benign/benign (2).png",
                "mask": "benign/benign (2)_mask.png",
                "class": "benign",
                "patient": "P1",
            },
            {"image": "normal/normal (1).png", "class": 0},
            {"image": "malignant/malignant (1).png", "label": "malignant/malignant (1)_mask.png", "class": "malignant"},
            {"image": "benign/benign (1).png", "label": "benign", "site": 3},
        ],
        "validation": [{"image": "normal/normal (1).png", "class": "normal"}],
    }
    path = busi_root / "list.json"
    path.write_text(json.dumps(datalist))
    items = read_datalist(path)
    assert [it["label_name"] for it in items] == ["benign", "normal", "malignant", "benign"]
    assert items[0]["patient"] == "P1" and items[1]["patient"] == items[1]["id"] == "normal/normal (1)"
    assert items[0]["mask"] == str(busi_root.resolve() / "benign/benign (2)_mask.png")
    assert items[1]["mask"] is None
    assert Path(items[2]["mask"]).name == "malignant (1)_mask.png"  # "label" used as the mask path
    assert items[3]["mask"] is None and items[3]["site"] == "3"
    assert len(read_datalist(path, key="validation")) == 1
    assert read_dataset(path) == items


def test_read_datalist_base_dir_and_errors(busi_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "list.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"training": [{"image": "benign/benign (2).png", "class": "benign"}]}))
    with pytest.raises(InputDataError, match=r"list.json training\[0\]: image file not found"):
        read_datalist(path)
    assert read_datalist(path, base_dir=busi_root)[0]["image"] == str(busi_root.resolve() / "benign/benign (2).png")
    with pytest.raises(InputDataError, match=r"list.json: no list under key 'test'"):
        read_datalist(path, key="test")
    path.write_text(json.dumps({"training": [{"image": "benign/benign (2).png"}]}))
    with pytest.raises(InputDataError, match=r"training\[0\]: entry has no 'class'"):
        read_datalist(path, base_dir=busi_root)
    path.write_text("{not json")
    with pytest.raises(InputDataError, match=r"cannot read datalist .*list.json"):
        read_datalist(path)
    with pytest.raises(InputDataError, match=r"JSON file not found"):
        read_datalist(tmp_path / "missing.json")


# -------------------------------------------------------------------------------------- dispatcher
def test_read_dataset_dispatch_errors(tmp_path: Path, labels_root: Path) -> None:
    with pytest.raises(InputDataError, match="dataset not found"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(InputDataError, match="unknown dataset format 'dicom'"):
        read_dataset(labels_root, fmt="dicom")
    (tmp_path / "junk").mkdir()
    with pytest.raises(InputDataError, match="unknown dataset layout"):
        read_dataset(tmp_path / "junk")
    # An explicit format overrides detection (and then fails for the wrong layout).
    with pytest.raises(InputDataError, match="BUS-UCLM images folder not found"):
        read_dataset(tmp_path / "junk", fmt="bus_uclm")


def test_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "absent"))
    assert default_data_dir() is None  # an explicit but wrong setting never falls back elsewhere
    monkeypatch.delenv(DATA_DIR_ENV)
    fallback = Path(__file__).resolve().parents[3] / "shared" / "data"
    assert default_data_dir() == (fallback if fallback.is_dir() else None)


# --------------------------------------------------------------------------------------- real data
def _real_root(name: str) -> Path:
    root = default_data_dir()
    if root is None or not (root / name / "labels.csv").is_file():
        pytest.skip(f"real data {name}/labels.csv not found (set ${DATA_DIR_ENV} or provide ../shared/data)")
    return root / name


@pytest.mark.realdata
def test_real_bus_uclm_counts() -> None:
    items = read_dataset(_real_root("bus_uclm"))
    assert len(items) == 679
    assert Counter(it["label_name"] for it in items) == {"normal": 419, "benign": 170, "malignant": 90}
    assert len({it["patient"] for it in items}) == 38
    assert all(Path(it["image"]).is_file() and Path(it["mask"]).is_file() for it in items[:20])


@pytest.mark.realdata
def test_real_bus_bra_counts() -> None:
    items = read_dataset(_real_root("bus_bra"))
    assert len(items) == 1875
    assert Counter(it["label_name"] for it in items) == {"benign": 1268, "malignant": 607}
    assert len({it["patient"] for it in items}) == 1064
    # README: four scanners, GE Logiq 7 (902), GE Logiq 5 (809), Toshiba Aplio 300 (139), U-Systems (25).
    assert sorted(Counter(it["device"] for it in items).values()) == [25, 139, 809, 902]
