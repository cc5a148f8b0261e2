"""UltraAD on decoded ultrasound DICOM frames: tissue-region crop, model, heatmap back into the full frame.

Shared by the MONAI Deploy app and the MONAI Label app. When the image carries a Sequence of Ultrasound Regions, only
the 2D tissue (B-mode) regions are analysed (scanner text, colour bars and Doppler panels stay out of the model's
view); each region's heatmap is mapped back into the full frame, zero elsewhere. The image class comes from the
largest tissue region. Without regions, the whole frame is analysed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monai_ultraad.data.transforms import apply_pipeline, map_to_original, ultraad_array_preprocessing
from monai_ultraad.networks.ultraad import UltraAD


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


@dataclass
class FrameResult:
    """UltraAD's answer for one source frame, in the full frame geometry."""

    frame_number: int  # 1-based number of the frame in the source object
    heatmap: np.ndarray  # (rows, cols) float32 in [0, 1]
    class_probs: dict[str, float]
    anomaly_score: float


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


@torch.no_grad()
def predict_frames(
    model: UltraAD,
    frames: np.ndarray,
    frame_numbers: Sequence[int],
    tissue_regions: Sequence = (),
    batch_size: int = 8,
    windows: Sequence[AnalysisWindow] | None = None,
) -> list[FrameResult]:
    """Run UltraAD on (F, rows, cols, 3) uint8 RGB frames.

    Args:
        model: a trained UltraAD (eval mode).
        frames: decoded frames.
        frame_numbers: 1-based source frame number of each frame.
        tissue_regions: ultrasound regions to analyse (objects with inclusive pixel bounds x0, y0, x1, y1).
        batch_size: frames per model call.
        windows: the rectangles to analyse (default: :func:`analysis_windows` of ``tissue_regions``).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, rows, cols, 3), got {frames.shape}")
    n, rows, cols, _ = frames.shape
    windows = list(windows) if windows else analysis_windows(tissue_regions, rows, cols)
    main_window = max(range(len(windows)), key=lambda i: windows[i].area)
    pre = ultraad_array_preprocessing(model.image_size, model.backbone.mean, model.backbone.std)
    device = next(model.parameters()).device
    model.eval()
    heatmaps = np.zeros((n, rows, cols), np.float32)
    probs = np.zeros((n, len(model.class_names)), np.float32)
    scores = np.zeros(n, np.float32)
    for w_index, win in enumerate(windows):
        for start in range(0, n, batch_size):
            chunk = frames[start : start + batch_size, win.top : win.bottom, win.left : win.right]
            inputs = torch.stack([
                apply_pipeline(pre, {"image": torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float() / 255.0})[
                    "image"
                ].as_tensor()
                for f in chunk
            ])
            out = model(inputs.to(device))
            for i in range(len(chunk)):
                local = map_to_original(out.anomaly_map[i].float().cpu(), (win.bottom - win.top, win.right - win.left))
                target = heatmaps[start + i, win.top : win.bottom, win.left : win.right]
                np.maximum(target, local[0].numpy(), out=target)  # overlapping regions: keep the stronger evidence
            if w_index == main_window:
                probs[start : start + len(chunk)] = out.class_probs.float().cpu().numpy()
                scores[start : start + len(chunk)] = out.anomaly_score.float().cpu().numpy()
    return [
        FrameResult(
            int(frame_numbers[i]),
            heatmaps[i],
            {c: float(p) for c, p in zip(model.class_names, probs[i])},
            float(scores[i]),
        )
        for i in range(n)
    ]


__all__ = ["AnalysisWindow", "FrameResult", "analysis_windows", "predict_frames"]
