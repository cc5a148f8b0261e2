"""Benchmark outputs: results.json (every cell and the mean ± std summary), results.md, ROC and heatmap-grid PNGs."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from benchmarks.shortcut_audit import audit_markdown, audit_summary
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from monai_ultraad.metrics import summarize_over_seeds
from monai_ultraad.visualize import plot_roc_curves

RANDOM_NOTE = "random weights: accuracy not meaningful"
#: Table columns: (metric key, header).
COLUMNS = (
    ("image_auroc", "I-AUROC"),
    ("benign_malignant_auroc", "B/M AUROC"),
    ("cls_auroc_macro", "3-cls AUROC"),
    ("balanced_accuracy", "bal. acc"),
    ("ece", "ECE"),
    ("pixel_auroc", "P-AUROC"),
    ("dice", "Dice"),
    ("iou", "IoU"),
)


def summarise(cells: Mapping[tuple[str, int, int], dict[str, Any]]) -> dict[str, Any]:
    """``{target: {method: {k: {metric: MetricSummary}}}}`` over seeds; not-applicable metrics stay absent.

    A metric that applies but is undefined (e.g. image AUROC on a target without normal images) is NaN in memory and
    null in a cell file; both count as an undefined value (n = 0), so a report computed in the run and one re-rendered
    from the files agree. Not-applicable metrics are the ones the cell lists in ``not_applicable``.
    """
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for (method, k, _seed), cell in cells.items():
        for target, res in cell["targets"].items():
            grouped.setdefault((target, method, k), []).append(res["metrics"])
    out: dict[str, Any] = {}
    for (target, method, k), runs in sorted(grouped.items(), key=lambda x: (x[0][0], x[0][2])):
        numeric = [{m: math.nan if v is None else v for m, v in r.items() if m not in r.get("not_applicable", ())}
                   for r in runs]
        out.setdefault(target, {}).setdefault(method, {})[str(k)] = summarize_over_seeds(numeric)
    return out


def _fmt(summary: Mapping[str, Any] | None) -> str:
    if not summary or summary.get("n", 0) == 0 or summary.get("mean") is None or math.isnan(summary["mean"]):
        return "–"
    std = summary.get("std")
    if summary.get("n", 0) < 2 or std is None or math.isnan(std):
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {std:.3f}"


def markdown(run: Mapping[str, Any], summary: Mapping[str, Any], cards: Mapping[str, Any],
             timings: Mapping[str, float]) -> str:
    lines = [f"# Benchmark `{run['name']}`", ""]
    if run["random_weights"]:
        lines += [(f"> **{RANDOM_NOTE.upper()}.** The backbone ({run['backbone']['model_name']}) was randomly "
                   "initialised; these numbers only show that every method runs end to end."), ""]
    if run.get("missing_cells"):
        lines += [(f"> **Partial:** {len(run['missing_cells'])} cells were not computed "
                   f"({', '.join(run['missing_cells'])}); their rows average fewer seeds."), ""]
    b = run["backbone"]
    lines += [
        f"- backbone: {b['model_name']} ({b['weights_id']}), input {b['image_size']} px, taps {b['feature_layers']}",
        (f"- shots per class: {run['shots']}; seeds: {run['seeds']} (mean ± std over seeds); "
         f"split seed {run['split_seed']}, test fraction {run['test_fraction']}, "
         f"validation capped at {run['max_val_per_class']} per class"),
        (f"- training data: {run['train_dataset']} (shots from training patients; hyperparameters, epochs and "
         "heatmap thresholds from patient-disjoint validation images only)"),
        ("- metric resolution: original image size (maps mapped back through the square padding); Dice/IoU at the "
         "validation threshold; ECE with 15 bins on the class probabilities"),
        (f"- produced by: `{run['command']}` on {run['host']} ({run['started']}), "
         f"torch {run['versions']['torch']}, open_clip {run['versions']['open_clip']}"
         + (f"; report re-rendered from the finished cells by `{run['report_rendered']['command']}` "
            f"({run['report_rendered']['at']})" if run.get("report_rendered") else "")),
        "",
    ]
    for target, info in run["targets"].items():
        for k in run["shots"]:
            lines += [f"## {target}, k = {k}", "", info, ""] if k == run["shots"][0] else [f"## {target}, k = {k}", ""]
            header = "| method | " + " | ".join(h for _, h in COLUMNS) + " |"
            lines += [header, "|" + "---|" * (len(COLUMNS) + 1)]
            for method, per_k in summary.get(target, {}).items():
                row = per_k.get(str(k), {})
                lines.append(f"| {method} | " + " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS) + " |")
            lines.append("")
    size = run["backbone"]["image_size"]
    lines += ["## Methods", "",
              "| method | input / metric resolution | image score | localisation | smoothing | classes | fit s (mean) |",
              "|---|---|---|---|---|---|---|"]
    for method, card in cards.items():
        notes = f" ({'; '.join(card['notes'])})" if card.get("notes") else ""
        lines.append(f"| {method} | {size} px square-padded / original image | {card['image_score']} | "
                     f"{card['localisation']}{notes} | {card['smoothing']} | {card['classes']} | "
                     f"{timings.get(method, float('nan')):.2f} |")
    lines += ["", ("'–': not applicable (the method has no such output) or undefined on this target "
                   "(bus_bra has no normal images, so no image AUROC there)."), ""]
    return "\n".join(lines)


def paper_markdown(run: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """This run's numbers beside the UltraAD paper's on BUSI (``--target busi=...``; without it, the run's last
    unseen target, named in the header, which is NOT the paper's set)."""
    from benchmarks.paper_numbers import METRICS, PAPER_BUSI

    targets = list(run["targets"])
    target = "busi" if "busi" in targets else targets[-1]
    methods = [m for m in summary.get(target, {}) if m in PAPER_BUSI]
    if not methods:
        return []
    same = target == "busi"
    lines = [f"## Beside the paper (UltraAD Tab. 3.1 / Tab. 2, BUSI, ViT-L-14-336; ours: `{target}`)", ""]
    if not same:
        lines += [f"> Ours are on `{target}`, not BUSI" + (", with random weights" if run["random_weights"] else "")
                  + ": the columns sit side by side for the layout only. Run `benchmarks/configs/paper.yaml` with "
                  "`--target busi=/path` and the real weights to compare.", ""]
    header = ["method", "k"] + [f"{col} paper / ours" for col in ("I-AUROC", "3-cls AUROC", "P-AUROC")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        for k in run["shots"]:
            row = summary[target][method].get(str(k), {})
            cells = []
            for col in ("detection", "classification", "localisation"):
                paper = PAPER_BUSI[method].get(col, {}).get(k)
                ours = row.get(METRICS[col])
                cells.append(f"{'–' if paper is None else f'{paper / 100:.3f}'} / {_fmt(ours)}")
            lines.append(f"| {method} | {k} | " + " | ".join(cells) + " |")
    return lines + ["", "Paper values are means of 3 seeds (%, shown as fractions); '–': the paper gives none.", ""]


def roc_curves(cells: Mapping[tuple[str, int, int], dict[str, Any]], target: str, k: int, seed: int,
               class_names: Sequence[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """Image-level ROC inputs of every method on ``target``: normal vs abnormal where the target has normal images,
    otherwise benign vs malignant from P(malignant) / (P(benign) + P(malignant))."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    kind = "normal vs abnormal"
    for (method, ck, cs), cell in cells.items():
        if ck != k or cs != seed or target not in cell["targets"]:
            continue
        per = cell["targets"][target]["per_image"]
        labels = np.array(per["label"])
        if (labels == 0).any():
            if per["anomaly_score"][0] is None:
                continue
            curves[method] = (labels != 0, np.array(per["anomaly_score"], dtype=float))
        else:
            kind = "benign vs malignant"
            if per["class_probs"][0] is None:
                continue
            probs = np.array(per["class_probs"], dtype=float)
            ib, im = class_names.index("benign"), class_names.index("malignant")
            den = probs[:, ib] + probs[:, im]
            curves[method] = (labels == im, np.where(den > 0, probs[:, im] / np.where(den > 0, den, 1), 0.5))
    return curves, kind


def heatmap_grid(path: Path, rows: Sequence[dict[str, Any]], thumbs: Mapping[str, Mapping[str, np.ndarray]],
                 title: str, random_weights: bool, size: int = 96) -> Path:
    """Image | ground truth | one column per localising method, one row per image; images with calliper marks or a
    Doppler overlay are labelled FLAGGED in red."""
    methods = [m for m in thumbs if thumbs[m]]
    cols = 2 + len(methods)
    fig = Figure(figsize=(1.2 * cols, 1.25 * len(rows) + 1.0), dpi=110)
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        image = np.asarray(Image.open(row["image"]).convert("L").resize((size, size)))
        mask = np.asarray(Image.open(row["mask"]).convert("L").resize((size, size), Image.NEAREST)) > 127 \
            if row.get("mask") else np.zeros((size, size), bool)
        flags = image_flags(row)
        panels = [("image", image, "gray"), ("ground truth", mask.astype(float), "gray")]
        panels += [(m, thumbs[m].get(row["id"]), "jet") for m in methods]
        for c, (name, data, cmap) in enumerate(panels):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.axis("off")
            if data is not None:
                if cmap == "jet":
                    ax.imshow(image, cmap="gray")
                    ax.imshow(data / 255.0, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                else:
                    ax.imshow(data, cmap=cmap)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(name, 16)), fontsize=6)
            if c == 0 and flags:  # flagged input: calliper marks / Doppler overlay (shortcut audit)
                ax.text(2, size - 4, "FLAGGED:\n" + ", ".join(flags), color="red", fontsize=5, weight="bold")
    fig.suptitle(title + (f"\n{RANDOM_NOTE.upper()}" if random_weights else ""), fontsize=8,
                 color="red" if random_weights else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def audit_subset_sizes(cells: Mapping[tuple[str, int, int], dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{target: {subset: n_images}}`` of the shortcut audit (the same for every cell of a target)."""
    sizes: dict[str, dict[str, int]] = {}
    for cell in cells.values():
        for target, res in cell["targets"].items():
            audit = res["metrics"].get("shortcut_audit")
            if audit:
                sizes[target] = {s: v["n_images"] for s, v in audit["subsets"].items()}
    return sizes


def image_flags(row: Mapping[str, Any]) -> list[str]:
    """What the heatmap grid marks on an image: the dataset's marks / doppler columns, else the input gate's flags."""
    if "marks" in row or "doppler" in row:
        return [name for name in ("marks", "doppler") if str(row.get(name, "")).lower() == "true"]
    from monai_ultraad.quality import assess_file

    names = {"marks": "marks", "colour_overlay": "doppler"}
    return [names[f] for f in assess_file(row["image"]).flags]


def write_all(out: Path, run: dict[str, Any], cells: dict, cards: dict, grid_rows: list[dict], thumbs: dict,
              class_names: Sequence[str]) -> dict[str, Path]:
    summary = summarise(cells)
    audit = audit_summary(cells)
    timings = {}
    for (method, _k, _s), cell in cells.items():
        timings.setdefault(method, []).append(cell["fit_seconds"])
    mean_t = {m: float(np.mean(v)) for m, v in timings.items()}
    written = {
        "json": atomic_write_json(out / "results.json", {
            "run": run, "summary": summary, "shortcut_audit": audit, "methods": cards, "fit_seconds": mean_t,
            "cells": [{"method": m, "k": k, "seed": s, **{key: c[key] for key in ("fit", "fit_seconds", "threshold",
                                                                                  "threshold_from")},
                       "metrics": {t: r["metrics"] for t, r in c["targets"].items()}}
                      for (m, k, s), c in sorted(cells.items())],
        }, nan_as_null=True),
        "markdown": atomic_write_text(out / "results.md", markdown(run, summary, cards, mean_t) + "\n".join(
            audit_markdown(audit, _fmt, audit_subset_sizes(cells)) + ["", *paper_markdown(run, summary)])),
    }
    k, seed = max(run["shots"]), run["seeds"][0]
    for target in run["targets"]:
        curves, kind = roc_curves(cells, target, k, seed, class_names)
        if curves:
            written[f"roc_{target}"] = plot_roc_curves(
                out / f"roc_{target}.png", curves,
                title=f"{target}: {kind}, k={k}, seed {seed}" + (f" ({RANDOM_NOTE})" if run["random_weights"] else ""),
                random_weights=run["random_weights"])
    if grid_rows and thumbs:
        written["heatmaps"] = heatmap_grid(out / "heatmaps.png", grid_rows, thumbs,
                                           f"heatmaps, k={k}, seed {seed}", run["random_weights"])
    return written
