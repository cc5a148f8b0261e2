"""The input gate: run every detector on the analysed tissue region(s) of an image and say what it found.

UltraAD is meant for plain B-mode breast ultrasound. Colour Doppler / elastography overlays put a colour map where
the model expects echo texture, and calliper marks are a known shortcut (radiologists measure lesions, so marks sit
on abnormal images). The gate does not decide for the user: by default every output states the flags and the image
is analysed anyway; ``refuse_flagged`` (CLI ``--refuse_flagged``, deploy app ``--refuse-flagged``) turns a flag into
a refusal with :func:`refusal_reason` as the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .colour_overlay import detect_colour_overlay
from .detection import Detection
from .marks import detect_marks

#: Name of the flags' entry in every JSON output (CLI, bundle, MONAI Label, deploy run report).
QUALITY_KEY = "input_quality"
#: Frames of a cine loop the gate looks at, at most (evenly spread); one flagged frame flags the loop.
MAX_GATE_FRAMES = 8

_WHAT = {"colour_overlay": "colour Doppler / elastography overlay", "marks": "calliper / annotation marks"}


@dataclass
class InputQuality:
    """What the gate found on one image (a cine loop: on the frames it looked at, the strongest of each detector)."""

    detections: dict[str, Detection] = field(default_factory=dict)
    frames_checked: list[int] = field(default_factory=list)  # 1-based source frame numbers (cine loops)

    @property
    def flags(self) -> list[str]:
        return [name for name, d in self.detections.items() if d.flagged]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def marks_mask(self) -> np.ndarray | None:
        d = self.detections.get("marks")
        return None if d is None else d.mask

    def summary(self) -> str:
        """One line for reports: 'colour Doppler / elastography overlay (score 3.2 >= 0.1); ...' or 'no flags'."""
        if not self.flagged:
            return "plain B-mode: no colour overlay or marks detected"
        return "; ".join(f"{_WHAT[n]} detected (score {self.detections[n].score:.3g} >= {self.detections[n].threshold:g})"
                         for n in self.flags)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flagged": self.flagged, "flags": self.flags, "summary": self.summary()}
        out.update({name: d.to_dict() for name, d in self.detections.items()})
        if self.frames_checked:
            out["frames_checked"] = self.frames_checked
        return out


def _windows_or_frame(windows: Sequence | None, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each analysed window; objects with those attributes or 4-tuples."""
    if not windows:
        return [(0, rows, 0, cols)]
    out = []
    for w in windows:
        top, bottom, left, right = (w.top, w.bottom, w.left, w.right) if hasattr(w, "top") else w
        out.append((max(int(top), 0), min(int(bottom), rows), max(int(left), 0), min(int(right), cols)))
    return out


def _merge(parts: list[Detection], shape: tuple[int, int]) -> Detection:
    """One detection from several windows or frames: the largest score, the union of the masks and boxes."""
    best = max(parts, key=lambda d: d.score)
    mask = np.zeros(shape, bool)
    boxes: list = []
    for d in parts:
        mask |= d.mask
        boxes += [b for b in d.boxes if b not in boxes]
    return Detection(best.name, best.flagged, best.score, best.threshold, best.unit, mask, boxes, best.details)


def assess_image(image: np.ndarray, windows: Sequence | None = None,
                 thresholds: dict[str, float] | None = None) -> InputQuality:
    """Run every detector on the analysed windows of one (rows, cols, 3) RGB image (the whole image by default).

    Args:
        image: RGB, uint8/uint16 or float in [0, 1]; grey (rows, cols) is accepted.
        windows: analysed tissue regions (:class:`monai_ultraad.inference.AnalysisWindow` or
            (top, bottom, left, right) tuples); masks and boxes come back in the full image geometry.
        thresholds: per-detector flag thresholds overriding the defaults (``{"marks": 2}``).
    """
    image = np.asarray(image)
    rows, cols = image.shape[:2]
    thresholds = thresholds or {}
    found: dict[str, list[Detection]] = {"colour_overlay": [], "marks": []}
    for top, bottom, left, right in _windows_or_frame(windows, rows, cols):
        if bottom - top < 8 or right - left < 8:
            continue
        crop = image[top:bottom, left:right]
        kw = {"offset": (top, left), "full_shape": (rows, cols)}
        if "colour_overlay" in thresholds:
            kw_c = {**kw, "threshold": thresholds["colour_overlay"]}
        else:
            kw_c = kw
        found["colour_overlay"].append(detect_colour_overlay(crop, **kw_c))
        found["marks"].append(detect_marks(crop, **({**kw, "threshold": thresholds["marks"]} if "marks" in thresholds else kw)))
    return InputQuality({name: _merge(parts, (rows, cols)) for name, parts in found.items() if parts})


def gate_positions(n_frames: int, max_frames: int = MAX_GATE_FRAMES) -> list[int]:
    """The 0-based positions of the frames :func:`assess_frames` checks in a loop of ``n_frames``: up to
    ``max_frames``, evenly spread (a streamed loop decodes just these for the gate)."""
    return sorted(set(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).round().astype(int).tolist()))


def assess_frames(frames: np.ndarray, frame_numbers: Sequence[int] | None = None, windows: Sequence | None = None,
                  max_frames: int = MAX_GATE_FRAMES) -> InputQuality:
    """The gate for a (F, rows, cols, 3) stack (a cine loop): up to ``max_frames`` evenly spread frames are checked;
    each detector keeps its strongest frame (so one Doppler frame flags the loop)."""
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] != 3:
        frames = frames[..., None].repeat(3, axis=-1)
    if frames.ndim == 3:
        frames = frames[None]
    n = frames.shape[0]
    numbers = list(frame_numbers) if frame_numbers is not None else list(range(1, n + 1))
    picks = gate_positions(n, max_frames)
    per_frame = [assess_image(frames[i], windows) for i in picks]
    names = per_frame[0].detections.keys()
    merged = {name: _merge([q.detections[name] for q in per_frame], frames.shape[1:3]) for name in names}
    return InputQuality(merged, [int(numbers[i]) for i in picks])


def assess_file(path) -> InputQuality:
    """The gate for an image file (PNG/JPEG/..., read like the model's input: grey replicated to RGB)."""
    from monai_ultraad.data.transforms import load_image_array

    return assess_image(load_image_array(path))


def refusal_reason(quality: InputQuality, name: str = "image") -> str | None:
    """The message for refusing a flagged input (None when nothing is flagged)."""
    if not quality.flagged:
        return None
    return (f"{name}: refused, not a plain B-mode image: {quality.summary()}; UltraAD is only meant for plain "
            f"B-mode breast ultrasound (run without the refuse option to analyse it anyway, flagged)")


def refusal_record(path, quality: InputQuality) -> dict[str, Any]:
    """The JSON written instead of a prediction for a refused input (file name only, no folder)."""
    from pathlib import Path

    name = Path(str(path)).name
    return {"image": name, "refused": True, "reason": refusal_reason(quality, name), QUALITY_KEY: quality.to_dict()}


def refuse_file(path, output_dir) -> dict[str, Any] | None:
    """For a refuse-flagged run: gate an image file; when flagged, write ``<stem>.json`` (the refusal record) into
    ``output_dir`` and return the record, else return None (analyse it)."""
    from pathlib import Path

    from monai_ultraad.io_utils import atomic_write_json
    from monai_ultraad.prediction_files import output_stem

    quality = assess_file(path)
    if not quality.flagged:
        return None
    record = refusal_record(path, quality)
    atomic_write_json(Path(output_dir) / f"{output_stem(path)}.json", record)
    return record


__all__ = ["MAX_GATE_FRAMES", "QUALITY_KEY", "InputQuality", "assess_file", "assess_frames", "assess_image", "gate_positions",
           "refusal_reason", "refusal_record", "refuse_file"]
