"""One source on its way through the app: what was decoded and computed from it, the objects staged for it, and
its outcome. Every operator receives it, adds its part (or records why it could not) and passes it on, so that the
last operator (:mod:`operators.publisher`) decides once, for all of the source's objects together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SourceWork:
    path: Path  # the source file
    name: str  # its path relative to the input folder: how reports and logs name it
    image: object | None = None  # monai_ultraad.dicom.reader.UltrasoundImage, once decoded
    windows: list | None = None  # analysis windows (region_crop)
    result: object | None = None  # operators.ultraad_inference.ImageResult, once scored
    staging: Path | None = None  # the hidden folder its objects are written into (operators.output_folder)
    objects: dict[str, Path] = field(default_factory=dict)  # kind ("seg_binary", "sr", ...) -> staged file
    quality: dict | None = None  # the input gate's flags (monai_ultraad.quality.InputQuality.to_dict())
    records: list[dict] | None = None  # prediction records (monai_ultraad.records), one per analysed frame
    outcome: str | None = None  # None while all is well; "failed", "skipped" or "refused" (``reason`` says why)
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome is None

    def fail(self, reason: str) -> None:
        if self.ok:  # the first reason is the one that matters
            self.outcome, self.reason = "failed", " ".join(str(reason).split())

    def skip(self, reason: str) -> None:
        if self.ok:
            self.outcome, self.reason = "skipped", " ".join(str(reason).split())

    def refuse(self, reason: str) -> None:
        """Flagged by the input gate and refused (``--refuse-flagged``): not analysed, nothing written."""
        if self.ok:
            self.outcome, self.reason = "refused", " ".join(str(reason).split())

    def add(self, kind: str, path: Path) -> None:
        """Record a staged object; every object added is published with the others or not at all."""
        self.objects[kind] = Path(path)

    def release(self) -> None:
        """Drop the pixel data and heatmaps once the source is done (memory stays bounded by one source)."""
        if self.result is not None and hasattr(self.result, "close"):
            self.result.close()  # the heatmap spool's unnamed file
        self.image = self.windows = self.result = None  # (records are small: kept for the run report)
