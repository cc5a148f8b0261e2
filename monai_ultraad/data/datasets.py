"""Readers that turn a breast-ultrasound dataset on disk into a list of item dictionaries.

Every reader returns items of the same shape::

    {"id": "images/ALWI_000",            # stable and unique: image path relative to the root, no suffix
     "image": "/abs/path/ALWI_000.jpg",
     "mask": "/abs/path/ALWI_000.png",   # or None (no mask) or a list of paths to be OR-ed
     "label": 1, "label_name": "benign", # index into CLASS_NAMES and its name
     "patient": "ALWI",
     ...}                                # any extra columns, as strings (e.g. "device")

Readers only look at file names and tables (they never decode images, except the colour-coded
masks of the original BUS-UCLM release, whose colour *is* the label), so they are fast. Every
problem is reported as :class:`~monai_ultraad.errors.InputDataError` naming the file (and the
row for tables) and what is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_ultraad.constants import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    ID_KEY,
    IMAGE_KEY,
    IMAGE_SUFFIXES,
    LABEL_KEY,
    MASK_KEY,
    PATIENT_KEY,
)
from monai_ultraad.errors import InputDataError

__all__ = [
    "DATASET_FORMATS",
    "IMAGE_SUFFIXES",
    "LABEL_NAME_KEY",
    "MASK_ENCODING_KEY",
    "RGB_UCLM_ENCODING",
    "class_index",
    "default_data_dir",
    "read_bus_bra_original",
    "read_bus_uclm_original",
    "read_busi_folder",
    "read_datalist",
    "read_dataset",
    "read_image_folder",
    "read_labels_csv",
    "uclm_lesion_colours",
]

#: Item key holding the class name next to the integer ``label``.
LABEL_NAME_KEY = "label_name"
#: Item key telling the mask loader how to decode the mask file.
MASK_ENCODING_KEY = "mask_encoding"
#: ``mask_encoding`` value of the original BUS-UCLM masks (green = benign, red = malignant lesion).
RGB_UCLM_ENCODING = "rgb_uclm"
#: File suffixes accepted as images by the folder readers (lower case).
#: Values accepted by :func:`read_dataset`'s ``fmt``.
DATASET_FORMATS = ("auto", "labels_csv", "busi", "bus_uclm", "bus_bra", "datalist")

# Keys every reader fills itself; extra table columns never overwrite them.
_RESERVED_KEYS = frozenset({ID_KEY, IMAGE_KEY, MASK_KEY, LABEL_KEY, LABEL_NAME_KEY, PATIENT_KEY})


# --------------------------------------------------------------------------------------------- helpers
def class_index(value: Any, where: str) -> int:
    """Return the index into ``CLASS_NAMES`` of a class given as a name (any case) or an integer.

    Args:
        value: ``"benign"``, ``"Malignant"``, ``1``, ``"2"``...
        where: the file (and row) the value comes from, used in the error message.

    Raises:
        InputDataError: the value is not one of ``CLASS_NAMES`` nor a valid index.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a class
        raise InputDataError(f"{where}: class {value!r} is not one of {list(CLASS_NAMES)}")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        idx = int(value.strip())
    elif isinstance(value, str) and value.strip().lower() in CLASS_NAMES:
        return CLASS_NAMES.index(value.strip().lower())
    else:
        raise InputDataError(f"{where}: unknown class {value!r}; expected one of {list(CLASS_NAMES)}")
    if not 0 <= idx < len(CLASS_NAMES):
        raise InputDataError(f"{where}: class index {idx} out of range 0..{len(CLASS_NAMES) - 1} {list(CLASS_NAMES)}")
    return idx


def _make_item(
    item_id: str,
    image: Path,
    mask: Path | list[Path] | None,
    label: int,
    patient: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one item dictionary; extra values become strings and never replace the reserved keys."""
    if isinstance(mask, list):
        mask_value: str | list[str] | None = [str(m) for m in mask]
    else:
        mask_value = None if mask is None else str(mask)
    item: dict[str, Any] = {
        ID_KEY: item_id,
        IMAGE_KEY: str(image),
        MASK_KEY: mask_value,
        LABEL_KEY: label,
        LABEL_NAME_KEY: CLASS_NAMES[label],
        PATIENT_KEY: patient,
    }
    for key, value in (extra or {}).items():
        if key not in _RESERVED_KEYS and key not in item:
            item[key] = "" if value is None else str(value)
    return item


def _relative_id(path: Path, root: Path) -> str:
    """Stable id: the POSIX path relative to ``root`` without its suffix (falls back to the stem)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def _require_dir(root: Path, what: str) -> Path:
    if not root.exists():
        raise InputDataError(f"{what} not found: {root}")
    if not root.is_dir():
        raise InputDataError(f"{what} is not a folder: {root}")
    return root


def _require_file(path: Path, where: str, what: str = "image file") -> Path:
    if not path.is_file():
        raise InputDataError(f"{where}: {what} not found: {path}")
    return path


def _finish(items: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """Reject empty datasets and duplicate ids (both would silently break splits and caches)."""
    if not items:
        raise InputDataError(f"{source}: dataset is empty (no images found)")
    seen: dict[str, str] = {}
    for item in items:
        if item[ID_KEY] in seen:
            raise InputDataError(
                f"{source}: duplicate id {item[ID_KEY]!r} (images {seen[item[ID_KEY]]} and {item[IMAGE_KEY]})"
            )
        seen[item[ID_KEY]] = item[IMAGE_KEY]
    return items


def _read_csv_rows(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV table as dictionaries, checking the header has the ``required`` columns."""
    _require_file(path, "dataset", "table")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: tolerate a BOM from Excel
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in required if c not in header]
            if missing:
                raise InputDataError(f"{path}: missing column(s) {missing}; header is {header}")
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputDataError(f"cannot read table {path}: {err}") from err


# ---------------------------------------------------------------------------------- shared/data layout
def read_labels_csv(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the ``shared/data`` layout: ``root/labels.csv`` with image paths relative to ``root``.

    Required columns are ``image`` and ``label``; ``mask`` (empty = no mask) and ``patient`` (empty or
    absent = the image id) are optional; every other column is kept as a string (``device``,
    ``birads``, ...). ``root`` may also be the CSV file itself.

    Raises:
        InputDataError: missing root/CSV/column, unknown class, missing image or mask file, empty
            table or duplicate ids; the message names the CSV and the 1-based data row (line = row + 1).
    """
    path = Path(root)
    csv_path = path if path.suffix.lower() == ".csv" else path / "labels.csv"
    if path.suffix.lower() != ".csv":
        _require_dir(path, "dataset root")
    base = csv_path.parent.resolve()
    rows = _read_csv_rows(csv_path, required=("image", "label"))
    items = []
    for row_no, row in enumerate(rows, start=1):
        where = f"{csv_path} row {row_no}"
        if not row.get("image"):
            raise InputDataError(f"{where}: empty 'image' column")
        image = _require_file(base / row["image"], where)
        mask = _require_file(base / row["mask"], where, "mask file") if row.get("mask") else None
        label = class_index(row["label"], where)
        item_id = row.get("id") or _relative_id(base / row["image"], base)
        patient = row.get("patient") or item_id
        extra = {k: v for k, v in row.items() if k not in ("image", "mask", "label", "patient", "id")}
        items.append(_make_item(item_id, image, mask, label, patient, extra))
    return _finish(items, csv_path)


# ------------------------------------------------------------------------------------------ BUSI layout
_BUSI_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")


def read_busi_folder(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the public BUSI layout ``root/{normal,benign,malignant}/<name> (n).png``.

    Masks are ``<name> (n)_mask.png`` plus, for some images, ``<name> (n)_mask_1.png``...; a single mask
    is stored as a path, several as a list of paths (the mask loader takes their union). Class folder
    names are matched case-insensitively and at least one must exist. BUSI has no patient ids, so
    ``patient`` is the image id (``benign/benign (1)``): splits are then per image.

    Raises:
        InputDataError: missing root, no class folder, a lesion image without mask, a mask whose
            image is missing, or no images.
    """
    root_path = _require_dir(Path(root), "BUSI root").resolve()
    class_dirs = {p.name.lower(): p for p in root_path.iterdir() if p.is_dir() and p.name.lower() in CLASS_NAMES}
    if not class_dirs:
        raise InputDataError(f"{root_path}: no class folder {list(CLASS_NAMES)} found (BUSI layout expected)")
    items = []
    for name in CLASS_NAMES:  # CLASS_NAMES order + sorted files: stable item order
        if name not in class_dirs:
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for file in sorted(class_dirs[name].iterdir()):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = _BUSI_MASK_RE.match(file.stem)
            if match:
                order = int(match.group("n")) if match.group("n") else 0
                masks.setdefault(match.group("stem"), []).append((order, file))
            else:
                images[file.stem] = file
        for stem, mask_files in masks.items():
            if stem not in images:
                raise InputDataError(f"{mask_files[0][1]}: mask without image '{stem}.*' in {class_dirs[name]}")
        label = CLASS_NAMES.index(name)
        for stem, image in images.items():
            mask_paths = [p for _, p in sorted(masks.get(stem, []))]
            if not mask_paths and label != 0:
                raise InputDataError(f"{image}: {name} image has no mask '{stem}_mask.png'")
            mask: Path | list[Path] | None
            mask = None if not mask_paths else mask_paths[0] if len(mask_paths) == 1 else mask_paths
            item_id = _relative_id(image, root_path)
            items.append(_make_item(item_id, image, mask, label, item_id))
    return _finish(items, root_path)


# ---------------------------------------------------------------------------- original BUS-UCLM layout
def uclm_lesion_colours(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return boolean (green, red) lesion maps of an (H, W, 3) uint8 BUS-UCLM colour mask.

    A pixel counts only when its colour is *clearly* green or red (dominant channel above 100 and at
    least 50 above both others), so dark or grey anti-aliasing at lesion borders is not mistaken for
    either class.
    """
    arr = rgb.astype(np.int16)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    green = (g > 100) & (g - r >= 50) & (g - b >= 50)
    red = (r > 100) & (r - g >= 50) & (r - b >= 50)
    return green, red


def _uclm_label_from_mask(mask_path: Path) -> int:
    """Decode the class of an original BUS-UCLM mask from its colour (black = normal)."""
    from PIL import Image  # local: only this reader decodes images

    try:
        with Image.open(mask_path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputDataError(f"cannot decode mask {mask_path}: {err}") from err
    green, red = uclm_lesion_colours(rgb)
    has_green, has_red = bool(green.any()), bool(red.any())
    if has_green and has_red:
        raise InputDataError(
            f"{mask_path}: mask has both green (benign, {int(green.sum())} px) and red (malignant, "
            f"{int(red.sum())} px) lesion pixels; cannot derive one label"
        )
    if has_green:
        return CLASS_NAMES.index("benign")
    if has_red:
        return CLASS_NAMES.index("malignant")
    if rgb.max() > 127:  # bright but neither green nor red: not the colour code we know
        raise InputDataError(
            f"{mask_path}: mask has bright pixels that are neither green (benign) nor red (malignant); "
            "expected the original BUS-UCLM colour-coded masks"
        )
    return CLASS_NAMES.index("normal")


def read_bus_uclm_original(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the original BUS-UCLM release: ``root/images/*.png`` and colour-coded ``root/masks/*.png``.

    The label comes from the mask colour (all black = normal, green = benign, red = malignant), so
    every mask is decoded once here. ``patient`` is the first 4 letters of the file name
    (``ALWI_000.png`` -> ``ALWI``). Items carry ``mask_encoding="rgb_uclm"`` for the mask loader.

    Raises:
        InputDataError: missing folders, an image without mask, an unreadable mask or one with both
            colours (or an unknown colour), or no images.
    """
    root_path = _require_dir(Path(root), "BUS-UCLM root").resolve()
    image_dir = _require_dir(root_path / "images", "BUS-UCLM images folder")
    mask_dir = _require_dir(root_path / "masks", "BUS-UCLM masks folder")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    items = []
    for image in sorted(image_dir.iterdir()):
        if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem not in masks:
            raise InputDataError(f"{image}: no mask '{image.stem}.png' in {mask_dir}")
        mask = masks[image.stem]
        label = _uclm_label_from_mask(mask)
        item = _make_item(_relative_id(image, root_path), image, mask, label, image.name[:4])
        item[MASK_ENCODING_KEY] = RGB_UCLM_ENCODING
        items.append(item)
    return _finish(items, image_dir)


# ----------------------------------------------------------------------------- original BUS-BRA layout
_BUS_BRA_ID_RE = re.compile(r"^bus_(?P<number>\d+)-(?P<side>\w+)$")


def read_bus_bra_original(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the original BUS-BRA release: ``root/bus_data.csv``, ``root/Images/<ID>.png``, ``root/Masks/``.

    ``ID`` looks like ``bus_0001-l``; its mask is ``Masks/mask_0001-l.png`` and its patient the number
    part (``0001``). ``Pathology`` (benign|malignant) is the class; every other column (``BIRADS``,
    ``Device``, ``Histology``...) is kept as a string under its lower-case name. ``root`` may also be
    the CSV itself.

    Raises:
        InputDataError: missing root/CSV/column, malformed ID, unknown pathology, missing image or
            mask, empty table or duplicate ids (messages name the CSV and row).
    """
    path = Path(root)
    csv_path = path if path.suffix.lower() == ".csv" else path / "bus_data.csv"
    if path.suffix.lower() != ".csv":
        _require_dir(path, "BUS-BRA root")
    base = csv_path.parent.resolve()
    rows = _read_csv_rows(csv_path, required=("ID", "Pathology"))
    items = []
    for row_no, row in enumerate(rows, start=1):
        where = f"{csv_path} row {row_no}"
        match = _BUS_BRA_ID_RE.match(row["ID"])
        if not match:
            raise InputDataError(f"{where}: ID {row['ID']!r} does not look like 'bus_0001-l'")
        label = class_index(row["Pathology"], where)
        image = _require_file(base / "Images" / f"{row['ID']}.png", where)
        mask = _require_file(
            base / "Masks" / f"mask_{match.group('number')}-{match.group('side')}.png", where, "mask file"
        )
        extra = {k.lower(): v for k, v in row.items() if k not in ("ID", "Pathology")}
        items.append(_make_item(_relative_id(image, base), image, mask, label, match.group("number"), extra))
    return _finish(items, csv_path)


# ------------------------------------------------------------------------------------- MONAI datalist
def read_datalist(
    path: str | os.PathLike[str], key: str = "training", base_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Read a MONAI (decathlon-style) datalist JSON via :func:`monai.data.load_decathlon_datalist`.

    Each entry under ``key`` has ``image``, an optional ``mask`` (or ``label`` when that is a path),
    a class under ``class`` (name or index; a ``label`` that is a class name or an int also works)
    and optional ``patient``/``id``/``mask_encoding``; other keys are kept as strings. Relative paths
    are resolved against ``base_dir`` or the JSON's folder.

    Raises:
        InputDataError: missing/invalid JSON, missing ``key``, entry without image or class, unknown
            class, missing image/mask file, empty list or duplicate ids (messages name JSON and entry).
    """
    from monai.data import load_decathlon_datalist  # local: keep `import datasets` light

    json_path = Path(path)
    _require_file(json_path, "datalist", "JSON file")
    base = Path(base_dir).resolve() if base_dir is not None else json_path.parent.resolve()
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputDataError(f"cannot read datalist {json_path}: {err}") from err
    if not isinstance(raw, dict) or key not in raw:
        raise InputDataError(f"{json_path}: no list under key {key!r}")
    if not isinstance(raw[key], list) or not all(isinstance(e, dict) for e in raw[key]):
        raise InputDataError(f"{json_path}: {key!r} must be a list of objects with an 'image' path")
    # MONAI resolves every value that happens to name an existing file; keep the raw entries for the
    # non-path keys, so that e.g. "class": "benign" is not turned into the path of a "benign" folder.
    resolved = load_decathlon_datalist(json_path, is_segmentation=False, data_list_key=key, base_dir=base)
    items = []
    for entry_no, (raw_entry, entry) in enumerate(zip(raw[key], resolved), start=1):
        where = f"{json_path} {key}[{entry_no - 1}]"
        if not isinstance(raw_entry.get("image"), str) or not raw_entry["image"]:
            raise InputDataError(f"{where}: entry has no 'image' path")
        image = _require_file(Path(entry["image"]), where)

        label_value = raw_entry.get("label")
        label_is_class = isinstance(label_value, int) or (
            isinstance(label_value, str) and label_value.strip().lower() in CLASS_NAMES
        )
        if "class" in raw_entry:
            label = class_index(raw_entry["class"], where)
        elif label_is_class:
            label = class_index(label_value, where)
        else:
            raise InputDataError(f"{where}: entry has no 'class' (one of {list(CLASS_NAMES)} or its index)")

        mask_raw = raw_entry.get("mask")
        if mask_raw is None and isinstance(label_value, str) and not label_is_class and label_value:
            mask_raw = label_value  # decathlon convention: "label" is the segmentation file
        mask: Path | list[Path] | None
        if mask_raw is None or mask_raw == "":
            mask = None
        elif isinstance(mask_raw, list):
            mask = [_require_file(base / m, where, "mask file") for m in mask_raw]
        else:
            mask = _require_file(base / str(mask_raw), where, "mask file")

        item_id = str(raw_entry.get("id") or _relative_id(image, base))
        patient = str(raw_entry.get("patient") or item_id)
        extra = {k: v for k, v in raw_entry.items() if k not in ("image", "mask", "label", "class", "id", "patient")}
        items.append(_make_item(item_id, image, mask, label, patient, extra))
    return _finish(items, json_path)


# ----------------------------------------------------------------------------------------- dispatcher
def _detect_format(path: Path) -> str:
    """Guess the layout of ``path`` from the files it holds (see :func:`read_dataset`)."""
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "datalist"
        if path.name.lower() == "bus_data.csv":
            return "bus_bra"
        if path.suffix.lower() == ".csv":
            return "labels_csv"
        raise InputDataError(f"{path}: cannot tell the dataset format of this file (expected .json or .csv)")
    _require_dir(path, "dataset root")
    if (path / "labels.csv").is_file():
        return "labels_csv"
    if (path / "bus_data.csv").is_file():
        return "bus_bra"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "bus_uclm"
    if any(p.is_dir() and p.name.lower() in CLASS_NAMES for p in path.iterdir()):
        return "busi"
    if (path / "datalist.json").is_file():
        return "datalist"
    raise InputDataError(
        f"{path}: unknown dataset layout; expected labels.csv, bus_data.csv (BUS-BRA), images/ + masks/ "
        f"(BUS-UCLM), class folders {list(CLASS_NAMES)} (BUSI) or datalist.json"
    )


def read_dataset(root_or_file: str | os.PathLike[str], fmt: str = "auto") -> list[dict[str, Any]]:
    """Read any supported dataset layout; ``fmt`` is one of ``DATASET_FORMATS``.

    ``auto`` picks, in order: a ``.json`` file -> datalist; ``bus_data.csv`` -> BUS-BRA; another
    ``.csv`` -> labels_csv; a folder with ``labels.csv`` -> labels_csv, with ``bus_data.csv`` ->
    BUS-BRA, with ``images/`` and ``masks/`` -> original BUS-UCLM, with class folders -> BUSI, with
    ``datalist.json`` -> datalist.

    Raises:
        InputDataError: unknown ``fmt``, undetectable layout, or any reader error.
    """
    path = Path(root_or_file)
    if fmt not in DATASET_FORMATS:
        raise InputDataError(f"unknown dataset format {fmt!r}; expected one of {list(DATASET_FORMATS)}")
    if not path.exists():
        raise InputDataError(f"dataset not found: {path}")
    if fmt == "auto":
        fmt = _detect_format(path)
    if fmt == "datalist" and path.is_dir():
        path = path / "datalist.json"
    readers = {
        "labels_csv": read_labels_csv,
        "busi": read_busi_folder,
        "bus_uclm": read_bus_uclm_original,
        "bus_bra": read_bus_bra_original,
        "datalist": read_datalist,
    }
    return readers[fmt](path)


def default_data_dir() -> Path | None:
    """Folder holding ``bus_uclm/``, ``bus_bra/``, ``dicom/``: ``$ULTRAAD_DATA_DIR`` or the checkout's ``shared/data``.

    When the environment variable is set it wins (no silent fall-back to another folder); ``None``
    is returned when the chosen folder does not exist.
    """
    env = os.environ.get(DATA_DIR_ENV)
    # datasets.py -> data/ -> monai_ultraad/ -> repository root; shared/ sits beside the repository.
    candidate = Path(env).expanduser() if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def read_image_folder(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Unlabelled images for inference: ``[{"id", "image"}]`` for a file, or every image file in a folder (sorted).

    Raises:
        InputDataError: the path does not exist or holds no image file.
    """
    root = Path(path)
    if not root.exists():
        raise InputDataError(f"input not found: {root}")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputDataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return [{ID_KEY: f.stem, IMAGE_KEY: str(f.resolve())} for f in files]
