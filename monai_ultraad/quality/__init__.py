"""Input quality gate: detectors of colour Doppler / elastography overlays and calliper / annotation marks, the gate
that runs them on the analysed tissue region, optional mark removal, and a MONAI transform for the output chains.

Measured against the ``doppler`` and ``marks`` columns of BUS-UCLM by ``python -m benchmarks.quality``.
"""

from .colour_overlay import detect_colour_overlay
from .detection import Detection
from .gate import (
    QUALITY_KEY,
    InputQuality,
    assess_file,
    assess_frames,
    assess_image,
    gate_positions,
    refusal_reason,
    refusal_record,
    refuse_file,
)
from .marks import detect_marks

__all__ = [
    "QUALITY_KEY",
    "Detection",
    "InputQuality",
    "assess_file",
    "assess_frames",
    "assess_image",
    "detect_colour_overlay",
    "detect_marks",
    "gate_positions",
    "refusal_reason",
    "refusal_record",
    "refuse_file",
]
