"""Checking and storing uploaded labels: validate first, then write atomically, so a bad upload never replaces a
good label and a crash never leaves half a file.

Image class of a label (used by training), in this order: ``params["class"]`` of ``PUT /datastore/label``
(normal / benign / malignant); else the label's values (1 benign, 2 malignant, the majority when both);
an empty label means normal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore

from lib.errors import BAD_REQUEST, NOT_FOUND, UNPROCESSABLE, http_error
from lib.imageio import LABELS, read_label, read_picture
from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.errors import InputDataError
from monai_ultraad.io_utils import atomic_write_bytes


def label_class(values: np.ndarray, info: dict[str, Any]) -> tuple[str, str]:
    """(class name, where it came from) of a label."""
    given = info.get("class")
    if given:
        return str(given), "params"
    benign, malignant = int((values == LABELS["benign"]).sum()), int((values == LABELS["malignant"]).sum())
    if benign == malignant == 0:
        return "normal", "empty label"
    return ("malignant" if malignant > benign else "benign"), "label values"


def validate_label(image_uri: str, image_id: str, label_file: str, info: dict[str, Any]) -> dict[str, Any]:
    """Check an uploaded label against its image; returns the info to store (with ``class``/``class_source``).

    Raises:
        HTTPException: 404 unknown image, 422 image unreadable, 400 bad label file or class.
    """
    if not image_uri or not os.path.exists(image_uri):
        raise http_error(NOT_FOUND, f"image {image_id!r} is not in the datastore; the label was not saved")
    given = info.get("class")
    if given is not None and str(given) not in CLASS_NAMES:
        raise http_error(BAD_REQUEST, f"label for {image_id!r}: class {given!r} is not one of {list(CLASS_NAMES)}")
    try:
        rows_cols = read_picture(image_uri).rgb.shape[:2]
    except InputDataError as exc:
        raise http_error(UNPROCESSABLE, f"image {image_id!r}: {exc}") from None
    try:
        values = read_label(label_file, rows_cols, name="the uploaded label")
    except InputDataError as exc:
        raise http_error(BAD_REQUEST, f"label upload for image {image_id!r} rejected, nothing saved: {exc}") from None
    name, source = label_class(values, info)
    out = dict(info)
    out.update({"class": name, "class_source": source, "lesion_pixels": int((values > 0).sum())})
    return out


def store_label_atomically(ds: LocalDatastore, image_id: str, label_file: str, tag: str, info: dict[str, Any]) -> str:
    """LocalDatastore.save_label's bookkeeping, but the file is written atomically (:func:`atomic_write_bytes`)."""
    obj = ds._datastore.objects.get(image_id)
    if not obj:
        raise http_error(NOT_FOUND, f"image {image_id!r} is not in the datastore; the label was not saved")
    _, ext = ds._to_id(os.path.basename(label_file))
    folder = Path(ds._datastore.label_path(tag))
    name = ds._filename(image_id, ext)
    with FileLock(ds._lock_file):
        folder.mkdir(parents=True, exist_ok=True)
        # A label is a small mask file: read whole, then written by the package's one atomic writer.
        atomic_write_bytes(folder / name, Path(label_file).read_bytes())
        info = dict(info, ts=int(time.time()), name=name)
        obj.labels[tag] = DataModel(info=info, ext=ext)
        ds._update_datastore_file(lock=False)
    return image_id
