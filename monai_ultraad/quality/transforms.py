"""MONAI transform that puts the input gate's flags into an inference item (CLI ``predict`` and the bundle)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Transform

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


__all__ = ["AssessInputQualityd"]
