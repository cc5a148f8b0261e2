"""The answer of one input-quality detector: a flag, a score, the threshold it was compared with, and where it fired."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Boxes listed in JSON / reports at most (a mask keeps every pixel).
MAX_LISTED_BOXES = 20


@dataclass
class Detection:
    """One detector's finding on one image.

    Attributes:
        name: ``"colour_overlay"`` (colour Doppler / elastography) or ``"marks"`` (callipers, annotations).
        flagged: ``score >= threshold``.
        score: the detector's evidence (its unit is in ``unit``).
        threshold: the flag threshold (chosen on bus_uclm threshold patients, see ``benchmarks/quality.py``).
        unit: what ``score`` counts.
        mask: (rows, cols) bool, the pixels the detector fired on, in the full image geometry.
        boxes: (top, left, bottom, right) of each fired component, exclusive ends, full image geometry.
        details: small explanatory extras (e.g. the hue mix of a colour overlay).
    """

    name: str
    flagged: bool
    score: float
    threshold: float
    unit: str
    mask: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no mask): flag, score, threshold, unit, up to 20 boxes, details."""
        return {
            "flagged": bool(self.flagged),
            "score": round(float(self.score), 4),
            "threshold": float(self.threshold),
            "unit": self.unit,
            "n_regions": len(self.boxes),
            "boxes": [list(map(int, b)) for b in self.boxes[:MAX_LISTED_BOXES]],
            **({"details": self.details} if self.details else {}),
        }


def component_boxes(labels: np.ndarray, keep: list[int], offset: tuple[int, int] = (0, 0)) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (top, left, bottom, right) of the labelled components ``keep``, shifted by ``offset``."""
    from scipy import ndimage as ndi

    slices = ndi.find_objects(labels)
    dy, dx = offset
    return [(slices[i - 1][0].start + dy, slices[i - 1][1].start + dx, slices[i - 1][0].stop + dy,
             slices[i - 1][1].stop + dx) for i in keep]


__all__ = ["MAX_LISTED_BOXES", "Detection", "component_boxes"]
