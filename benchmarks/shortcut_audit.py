"""Shortcut audit: does a method lean on calliper marks or colour overlays instead of the tissue?

On BUS-UCLM, marks sit on 142 of 260 lesion images and 10 of 419 normal ones, so "marks -> lesion" scores well
without reading the tissue. For every method and cell the benchmark therefore also reports:

- its metrics on the subsets with / without marks and with / without a Doppler overlay (from the dataset's
  ``marks`` / ``doppler`` columns when it has them, else from the input gate's detectors; the source is recorded);
  a method that reads the marks does much better on "marks" than on "no marks" images of the same classes;
- where its lesion maps peak: the fraction of each map's top-1 % pixels that fall on the detected marks (grown by
  ``MARK_MARGIN`` px), averaged over the images with detected marks; the marks cover well under 1 % of an image,
  so a value near 0 is what tissue-reading gives and a large value says the map points at the callipers.

With random weights these numbers are not meaningful; the machinery is what is tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from monai_ultraad.metrics import UltraADEvaluator, summarize_over_seeds

SUBSETS = ("marks", "no_marks", "doppler", "no_doppler")
#: Pixels around a detected glyph that still count as "on the mark" (maps are smooth, glyph strokes 1 px wide).
MARK_MARGIN = 2
TOP_FRACTION = 0.01
#: Metrics shown per subset in the report.
AUDIT_METRICS = ("image_auroc", "balanced_accuracy", "pixel_auroc", "dice")


@dataclass
class AuditData:
    """Per-image subsets and detected-marks masks of one target."""

    subsets: dict[str, set[str]]
    marks_masks: dict[str, np.ndarray] = field(default_factory=dict)  # image id -> bool mask, original geometry
    source: str = "detectors"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def audit_data(items: Sequence[Mapping[str, Any]], gate=None) -> AuditData:
    """Subsets and marks masks of ``items`` (dicts with ``id``, ``image`` and, optionally, ``marks`` / ``doppler``).

    ``gate(path) -> InputQuality`` defaults to :func:`monai_ultraad.quality.assess_file`.
    """
    if gate is None:
        from monai_ultraad.quality import assess_file as gate
    labelled = all("marks" in it and "doppler" in it for it in items)
    subsets = {name: set() for name in SUBSETS}
    masks: dict[str, np.ndarray] = {}
    for it in items:
        sid = str(it["id"])
        quality = gate(it["image"])
        marks = quality.detections["marks"]
        if marks.flagged:
            masks[sid] = ndi.binary_dilation(marks.mask, iterations=MARK_MARGIN) if MARK_MARGIN else marks.mask
        has_marks = _truthy(it["marks"]) if labelled else marks.flagged
        has_doppler = _truthy(it["doppler"]) if labelled else quality.detections["colour_overlay"].flagged
        subsets["marks" if has_marks else "no_marks"].add(sid)
        subsets["doppler" if has_doppler else "no_doppler"].add(sid)
    return AuditData(subsets, masks, "dataset columns marks/doppler" if labelled else "detectors")


def top_fraction_on(heatmap: np.ndarray, region: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Fraction of the ``fraction`` highest-valued pixels of ``heatmap`` that lie in ``region`` (same shape)."""
    flat = np.asarray(heatmap, np.float64).ravel()
    if flat.shape != np.asarray(region).ravel().shape:
        raise ValueError(f"heatmap {np.shape(heatmap)} and region {np.shape(region)} differ in shape")
    k = max(1, math.ceil(fraction * flat.size))
    top = np.argpartition(-flat, k - 1)[:k]
    return float(np.asarray(region, bool).ravel()[top].mean())


class ShortcutAudit:
    """Accumulates one method's predictions on one target per subset, and the top-1 %-on-marks fractions."""

    def __init__(self, data: AuditData, threshold: float, class_names: Sequence[str]) -> None:
        self.data = data
        self.evaluators = {name: UltraADEvaluator(threshold=threshold, class_names=class_names) for name in SUBSETS}
        self.on_marks: dict[str, float] = {}

    def update(self, ids: Sequence[str], probs: np.ndarray, scores: np.ndarray, labels: np.ndarray,
               maps: Sequence[np.ndarray] | None, masks: Sequence[np.ndarray | None] | None) -> None:
        for name, evaluator in self.evaluators.items():
            pick = [i for i, sid in enumerate(ids) if sid in self.data.subsets[name]]
            if pick:
                evaluator.update(probs[pick], scores[pick], labels[pick],
                                 [maps[i] for i in pick] if maps is not None else None,
                                 [masks[i] for i in pick] if maps is not None and masks is not None else None)
        if maps is not None:
            for i, sid in enumerate(ids):
                region = self.data.marks_masks.get(sid)
                if region is not None and region.shape == np.shape(maps[i]):
                    self.on_marks[sid] = top_fraction_on(maps[i], region)

    def compute(self, not_applicable: Sequence[str] = ()) -> dict[str, Any]:
        subsets = {}
        for name, evaluator in self.evaluators.items():
            n = len(self.data.subsets[name])
            if n == 0:
                subsets[name] = {"n_images": 0}
                continue
            metrics = evaluator.compute()
            subsets[name] = {"n_images": n, **{k: (None if k in not_applicable else metrics.get(k))
                                               for k in AUDIT_METRICS}}
        values = list(self.on_marks.values())
        return {"source": self.data.source, "subsets": subsets,
                "top1_on_marks": float(np.mean(values)) if values else None, "n_images_with_detected_marks":
                len(self.data.marks_masks), "n_maps_checked": len(values)}


# ---------------------------------------------------------------------------------------------------- report side
def audit_summary(cells: Mapping[tuple[str, int, int], Mapping[str, Any]]) -> dict[str, Any]:
    """``{target: {method: {k: {"<subset>:<metric>" | "top1_on_marks": MetricSummary}}}}`` over seeds, from the
    ``shortcut_audit`` entry the protocol puts into each cell's target metrics (cells without it are left out)."""
    grouped: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for (method, k, _seed), cell in cells.items():
        for target, res in cell["targets"].items():
            audit = res["metrics"].get("shortcut_audit")
            if not audit:
                continue
            flat = {f"{s}:{m}": math.nan if v.get(m) is None else v[m]
                    for s, v in audit["subsets"].items() for m in AUDIT_METRICS if m in v}
            flat["top1_on_marks"] = math.nan if audit.get("top1_on_marks") is None else audit["top1_on_marks"]
            grouped.setdefault((target, method, k), []).append(flat)
    out: dict[str, Any] = {}
    for (target, method, k), runs in sorted(grouped.items()):
        out.setdefault(target, {}).setdefault(method, {})[str(k)] = summarize_over_seeds(runs)
    return out


#: Columns of the report's shortcut-audit table: (key in audit_summary, header).
AUDIT_COLUMNS = (
    ("marks:image_auroc", "I-AUROC marks"),
    ("no_marks:image_auroc", "I-AUROC no marks"),
    ("marks:balanced_accuracy", "bal. acc marks"),
    ("no_marks:balanced_accuracy", "bal. acc no marks"),
    ("doppler:balanced_accuracy", "bal. acc Doppler"),
    ("no_doppler:balanced_accuracy", "bal. acc no Doppler"),
    ("marks:dice", "Dice marks"),
    ("no_marks:dice", "Dice no marks"),
    ("top1_on_marks", "top-1 % on marks"),
)


def audit_markdown(summary: Mapping[str, Any], fmt, subset_sizes: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Markdown lines of the shortcut-audit tables (one per target and k); ``fmt`` formats a MetricSummary."""
    lines: list[str] = []
    for target, per_method in summary.items():
        ks = sorted({int(k) for m in per_method.values() for k in m})
        sizes = subset_sizes.get(target, {})
        for k in ks:
            lines += [f"## Shortcut audit: {target}, k = {k}", "",
                      "Metrics on the images with / without calliper marks and Doppler overlays ("
                      + ", ".join(f"{n}: {sizes.get(n, '?')}" for n in SUBSETS) + " images), and the mean fraction "
                      "of each lesion map's top-1 % pixels on detected marks (within "
                      f"{MARK_MARGIN} px). A method reading the marks scores far better on 'marks' and points its "
                      "maps at them.", "",
                      "| method | " + " | ".join(h for _, h in AUDIT_COLUMNS) + " |",
                      "|" + "---|" * (len(AUDIT_COLUMNS) + 1)]
            for method, per_k in per_method.items():
                row = per_k.get(str(k), {})
                lines.append(f"| {method} | " + " | ".join(fmt(row.get(key)) for key, _ in AUDIT_COLUMNS) + " |")
            lines.append("")
    return lines


__all__ = ["AUDIT_COLUMNS", "AuditData", "ShortcutAudit", "audit_data", "audit_markdown", "audit_summary",
           "top_fraction_on"]
