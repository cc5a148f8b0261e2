"""MONAI transforms of the input gate: its flags into an inference item (CLI ``predict`` and the bundle), and the
optional removal of detected marks from a loaded image before the model sees it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from .gate import QUALITY_KEY, assess_file


class AssessInputQualityd(Transform):
    """Run the input gate on the item's original image file (``path_key``) and store ``input_quality``.

    Runs on the file as read from disk, not the model's padded and resized tensor, so masks and boxes are in the
    image's own pixels. An item that already carries ``input_quality`` (computed by the caller, e.g. for
    ``--refuse_flagged``) is left as it is.
    """

    def __init__(self, path_key: str = "image_path", output_key: str = QUALITY_KEY) -> None:
        self.path_key, self.output_key = path_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.output_key not in d:
            d[self.output_key] = assess_file(str(d[self.path_key])).to_dict()
        return d


class RemoveMarksd(MapTransform):
    """Detect calliper / annotation marks on a loaded (3, H, W) image in [0, 1] and fill them in (``"inpaint"`` or
    ``"mask"``, see :mod:`.mark_removal`), before square padding and resizing. Insert it after
    :class:`~monai_ultraad.data.transforms.LoadUltrasoundImaged` in a preprocessing chain. Off by default everywhere:
    its effect is measured by ``python -m benchmarks.mark_removal``, not assumed."""

    def __init__(self, keys: KeysCollection = "image", method: str = "inpaint") -> None:
        super().__init__(keys)
        self.method = method

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from .mark_removal import remove_marks
        from .marks import detect_marks

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = (img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)).float().cpu().numpy()
            rgb = np.moveaxis(arr, 0, -1)
            found = detect_marks(np.clip(rgb, 0, 1))
            if found.flagged:
                cleaned = remove_marks(rgb.astype(np.float32), found.mask, self.method)
                cleaned = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cleaned, -1, 0)))
                d[key] = type(img)(cleaned, meta=img.meta) if hasattr(img, "meta") else cleaned
            d[f"{key}_marks_removed"] = int(found.score) if found.flagged else 0
        return d


__all__ = ["AssessInputQualityd", "RemoveMarksd"]
