"""Folder datastore (``--studies <folder>`` of PNG/JPEG/NIfTI ultrasound images) with checked, atomic labels."""

from __future__ import annotations

from typing import Any

from monailabel.datastore.local import LocalDatastore

from lib.datastore.labels import store_label_atomically, validate_label

IMAGE_PATTERNS = ["*.png", "*.jpg", "*.jpeg", "*.nii.gz", "*.nii", "*.nrrd"]


class UltrasoundLocalDatastore(LocalDatastore):
    """LocalDatastore whose ``save_label`` rejects bad uploads (clear 4xx) and never half-writes a label."""

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        info = validate_label(self.get_image_uri(image_id), image_id, label_filename, label_info or {})
        return store_label_atomically(self, image_id, label_filename, label_tag, info)
