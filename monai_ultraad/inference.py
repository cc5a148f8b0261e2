"""The one UltraAD predictor: an image or a stream of frames in, one :class:`Prediction` per frame out.

Every surface calls it: the CLI's ``predict`` and the bundle's ``inferring`` (through
:func:`monai_ultraad.prediction_files.predict_files`), the deploy app's inference operator and the MONAI Label infer
task. Its JSON form is written by one function, :func:`monai_ultraad.records.prediction_record`.

Geometry: each analysis window (a tissue region of an ultrasound frame, or the whole image) is square-padded,
resized and CLIP-normalised (:func:`~monai_ultraad.data.transforms.ultraad_array_preprocessing`, the same transforms
as the file pipeline, so a PNG and the same pixels wrapped in DICOM give the same prediction); each window's heatmap
is mapped back into the full frame, zero elsewhere; the class probabilities and anomaly score come from the largest
window.

Frames are taken from an iterator and scored ``batch_size`` at a time, so a cine loop is never decoded whole; with
``compact=True`` each frame's heatmap is kept as float16 (:func:`compact_heatmap`) for writers that need the whole
loop at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_ultraad.data.transforms import apply_pipeline, map_to_original, ultraad_array_preprocessing


@dataclass
class AnalysisWindow:
    """A rectangle of the frame given to the model: rows ``top:bottom``, columns ``left:right`` (exclusive ends)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def area(self) -> int:
        return max(self.bottom - self.top, 0) * max(self.right - self.left, 0)


def analysis_windows(regions: Sequence, rows: int, cols: int) -> list[AnalysisWindow]:
    """Windows to analyse: the tissue regions (clipped to the frame), or the whole frame when there are none."""
    windows = []
    for region in regions:
        top, bottom = max(int(region.y0), 0), min(int(region.y1) + 1, rows)  # region bounds are inclusive
        left, right = max(int(region.x0), 0), min(int(region.x1) + 1, cols)
        window = AnalysisWindow(top, bottom, left, right)
        if window.area >= 64:  # a region of a few pixels is a header artefact, not tissue
            windows.append(window)
    return windows or [AnalysisWindow(0, rows, 0, cols)]


@dataclass
class Prediction:
    """UltraAD's answer for one image or one source frame, in the source's own geometry.

    Attributes:
        image: how the source is named in outputs (a file name, or a path relative to an input folder).
        frame_number: 1-based number of the source frame (1 for a single image).
        heatmap: (rows, cols) lesion probability in [0, 1] at source resolution (float32; float16 when compacted).
        class_probs: probability of each class name.
        anomaly_score: image-level anomaly score.
        threshold: heatmap value from which a pixel belongs to the lesion (the checkpoint's validation threshold).
        model: provenance of the model (:func:`model_provenance`).
        random_weights: the backbone had no pretrained weights: the prediction means nothing clinically.
        input_quality: the input gate's flags (:meth:`monai_ultraad.quality.InputQuality.to_dict`), when assessed.
    """

    image: str
    frame_number: int
    heatmap: np.ndarray
    class_probs: dict[str, float]
    anomaly_score: float
    threshold: float
    model: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False
    input_quality: dict[str, Any] | None = None

    @property
    def predicted_class(self) -> str:
        return max(self.class_probs, key=lambda c: self.class_probs[c])

    @property
    def lesion_mask(self) -> np.ndarray:
        """``heatmap >= threshold`` (compared in float32, as the DICOM writers do)."""
        return np.asarray(self.heatmap, dtype=np.float32) >= np.float32(self.threshold)

    def compact(self) -> Prediction:
        """The same prediction with a float16 heatmap (see :func:`compact_heatmap`)."""
        return replace(self, heatmap=compact_heatmap(self.heatmap, self.threshold))

    def record(self, **extra: Any) -> dict[str, Any]:
        """The JSON record (:func:`monai_ultraad.records.prediction_record`)."""
        from monai_ultraad.records import prediction_record

        return prediction_record(self, **extra)


def compact_heatmap(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """``heatmap`` (values in [0, 1]) as float16, half the memory of float32, with the same outputs.

    A plain cast moves a value by up to float16's rounding (2**-11 near 1), which can cross the lesion threshold
    or a quantisation boundary of an output. Where it does, the float16 neighbour on the original value's other
    side is taken, so that everything the writers derive from the heatmap is what float32 gives: the lesion mask
    (``>= threshold`` in float32 as the SEG/SR writers compare, and in float64 as the overlay does), the FRACTIONAL
    SEG value (``round(255 h)`` in float32, as highdicom computes it) and the overlay's colour-map entry
    (``floor(256 h)``, matplotlib's 256-entry map). Where no float16 value satisfies all, the lesion mask comes
    first, then the SEG value; the overlay colour may then be one map entry off (about 0.4% of pixels of a smooth
    heatmap: where a SEG step and a colour step lie within 2**-11 of each other).
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    half = heat.astype(np.float16)
    source, flat = heat.reshape(-1), half.reshape(-1)  # views
    t32, t64 = np.float32(threshold), float(threshold)
    above32, above64 = source >= t32, source.astype(np.float64) >= t64
    fraction = np.around(source * np.float32(255))
    colour = np.minimum(np.floor(source.astype(np.float64) * 256), 255)

    def fits(v: np.ndarray, index, strict: int) -> np.ndarray:
        """``v`` gives the original's lesion side (and, by ``strict``, its SEG fraction, then its colour entry)."""
        v32, v64 = v.astype(np.float32), v.astype(np.float64)
        ok = ((v32 >= t32) == above32[index]) & ((v64 >= t64) == above64[index])
        if strict >= 1:
            ok &= np.around(v32 * np.float32(255)) == fraction[index]
        if strict >= 2:
            ok &= np.minimum(np.floor(v64 * 256), 255) == colour[index]
        return ok

    bad = np.flatnonzero(~fits(flat, slice(None), 2))
    if bad.size:
        toward = np.where(source[bad] > flat[bad].astype(np.float32), np.float16(np.inf), np.float16(-np.inf))
        other = np.nextafter(flat[bad], toward)
        for strict in (2, 1):  # both neighbours of the original value fail the strictest test: relax it
            good = fits(other, bad, strict)
            flat[bad[good]] = other[good]
            left = ~good & ~fits(flat[bad], bad, strict)
            bad, other = bad[left], other[left]
        if bad.size:  # keep the lesion mask: the nearest float16 on the original side of the threshold
            lo, hi = min(t64, float(t32)), max(t64, float(t32))
            up, down = np.float16(hi), np.float16(lo)
            if float(up) < hi:
                up = np.nextafter(up, np.float16(np.inf))
            if float(down) >= lo:
                down = np.nextafter(down, np.float16(-np.inf))
            wide = flat[bad].astype(np.float64)
            flat[bad[above32[bad] & (wide < hi)]] = up
            flat[bad[~above32[bad] & (wide >= lo)]] = down
    return half


def model_provenance(model, checkpoint: str | Path | None = None, payload: Mapping[str, Any] | None = None,
                     checkpoint_sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a prediction: backbone and weights, head configuration, checkpoint and library version."""
    from monai_ultraad import __version__
    from monai_ultraad.networks.backbone import sha256_file

    if checkpoint is not None and checkpoint_sha256 is None and Path(checkpoint).is_file():
        checkpoint_sha256 = sha256_file(checkpoint)
    described = model.describe()
    versions = (payload or {}).get("versions") or {}
    return {
        "backbone": model.backbone.model_name,
        "weights_id": model.backbone.weights_id,
        "backbone_description": described["backbone"],
        "config": described["config"],
        "memory_size": described["memory_size"],
        "checkpoint": Path(checkpoint).name if checkpoint is not None else None,
        "checkpoint_sha256": checkpoint_sha256,
        "library_version": versions.get("monai_ultraad", __version__),
        **extra,
    }


class Predictor:
    """UltraAD (eval mode) with its heatmap threshold and provenance; scores images and frame streams.

    Args:
        model: a trained :class:`~monai_ultraad.networks.UltraAD`.
        threshold: heatmap threshold (the checkpoint's validation threshold).
        provenance: the ``model`` entry of every record (default: :func:`model_provenance` of ``model``).
        batch_size: frames per model call.
    """

    def __init__(self, model, threshold: float, provenance: Mapping[str, Any] | None = None, batch_size: int = 8):
        self.model = model.eval()
        self.threshold = float(threshold)
        self.provenance = dict(provenance) if provenance is not None else model_provenance(model)
        self.batch_size = int(batch_size)
        self._pre = ultraad_array_preprocessing(model.image_size, model.backbone.mean, model.backbone.std)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, pretrained: str | None = None, allow_random_init: bool = False,
                        device: str | torch.device = "cpu", batch_size: int = 8) -> Predictor:
        """Load a checkpoint (``torch.load(weights_only=True)``) with its validation threshold."""
        from monai_ultraad import engine

        model, payload = engine.load_checkpoint(checkpoint, pretrained=pretrained, allow_random_init=allow_random_init,
                                                device=device)
        return cls(model, float(payload["threshold"]), model_provenance(model, checkpoint, payload), batch_size)

    @property
    def random_weights(self) -> bool:
        return bool(self.model.random_weights)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def predict_image(self, image: np.ndarray, name: str = "image", windows: Sequence[AnalysisWindow] | None = None,
                      input_quality: Mapping[str, Any] | None = None, frame_number: int = 1) -> Prediction:
        """One (rows, cols, 3) RGB image, uint8 or float in [0, 1]."""
        return next(self.predict_frames([image], [frame_number], name, windows, input_quality))

    def predict_file(self, path: str | Path, input_quality: Mapping[str, Any] | None = None) -> Prediction:
        """An image file (PNG, JPEG, ... as :func:`~monai_ultraad.data.transforms.load_image_array` reads it)."""
        from monai_ultraad.data.transforms import load_image_array

        return self.predict_image(load_image_array(path), Path(str(path)).name, input_quality=input_quality)

    @torch.no_grad()
    def predict_frames(
        self,
        frames: Iterable[np.ndarray],
        frame_numbers: Sequence[int],
        name: str = "image",
        windows: Sequence[AnalysisWindow] | None = None,
        input_quality: Mapping[str, Any] | None = None,
        compact: bool = False,
    ) -> Iterator[Prediction]:
        """Score (rows, cols, 3) RGB frames as they come (uint8 or float in [0, 1]); one Prediction per frame.

        Args:
            frames: the frames, e.g. :meth:`monai_ultraad.dicom.reader.UltrasoundImage.iter_frames` (at most
                ``batch_size`` of them are held at once).
            frame_numbers: 1-based source frame number of each frame.
            name: the source's name in the records.
            windows: the rectangles to analyse (default: the whole frame).
            input_quality: the input gate's flags for the source, stated in every record.
            compact: keep float16 heatmaps (:func:`compact_heatmap`).
        """
        numbers = iter(frame_numbers)
        device = next(self.model.parameters()).device
        quality = dict(input_quality) if input_quality is not None else None
        source = iter(frames)
        while chunk := list(itertools.islice(source, self.batch_size)):
            chunk = [_as_unit_rgb(f) for f in chunk]
            rows, cols = chunk[0].shape[1:]
            if any(f.shape[1:] != (rows, cols) for f in chunk):
                raise ValueError("frames of one source must share one size")
            wins = list(windows) if windows else [AnalysisWindow(0, rows, 0, cols)]
            main = max(range(len(wins)), key=lambda i: wins[i].area)
            heatmaps = np.zeros((len(chunk), rows, cols), np.float32)
            for index, win in enumerate(wins):
                inputs = torch.stack([
                    apply_pipeline(self._pre, {"image": f[:, win.top : win.bottom, win.left : win.right]})[
                        "image"].as_tensor()
                    for f in chunk
                ])
                out = self.model(inputs.to(device))
                for i in range(len(chunk)):
                    local = map_to_original(out.anomaly_map[i].float().cpu(),
                                            (win.bottom - win.top, win.right - win.left))
                    target = heatmaps[i, win.top : win.bottom, win.left : win.right]
                    np.maximum(target, local[0].numpy(), out=target)  # overlapping windows: the stronger evidence
                if index == main:
                    probs = out.class_probs.float().cpu().numpy()
                    scores = out.anomaly_score.float().cpu().numpy()
            np.clip(heatmaps, 0.0, 1.0, out=heatmaps)
            for i in range(len(chunk)):
                number = next(numbers, None)
                if number is None:
                    raise ValueError("more frames than frame numbers")
                prediction = Prediction(
                    image=name, frame_number=int(number), heatmap=heatmaps[i].copy(),
                    class_probs={c: float(p) for c, p in zip(self.model.class_names, probs[i])},
                    anomaly_score=float(scores[i]), threshold=self.threshold, model=self.provenance,
                    random_weights=self.random_weights, input_quality=quality,
                )
                yield prediction.compact() if compact else prediction


def _as_unit_rgb(frame: np.ndarray) -> torch.Tensor:
    """(rows, cols, 3) uint8 or float [0, 1] -> float32 (3, rows, cols) tensor in [0, 1]."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (rows, cols, 3) RGB, got {arr.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    return tensor.float() / 255.0 if arr.dtype == np.uint8 else tensor.float()


__all__ = ["AnalysisWindow", "Prediction", "Predictor", "analysis_windows", "compact_heatmap", "model_provenance"]
