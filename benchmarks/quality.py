"""Measure the input gate's detectors (monai_ultraad.quality) on real data.

1. BUS-UCLM against its ``doppler`` and ``marks`` columns, patient-disjoint: the patients are split in two by a
   seeded shuffle; each detector's flag threshold is chosen on the first half (max F1 over the observed scores) and
   precision / recall are reported on the second half, with Wilson 95 % intervals. The defaults in the detector
   modules are the thresholds chosen here.
2. BUS-BRA (no such labels): how often each detector fires, per scanner.
3. The real ultrasound DICOM files (``../shared/data/dicom``, read with ``monai_ultraad.dicom.reader``, tissue regions
   when the file has them, up to 8 frames of a cine loop): what fires on each.

    python -m benchmarks.quality [--data_dir ../shared/data] [--output benchmarks/results/quality] [--max_bra N]

Writes ``quality.json`` (every score, the split, the thresholds, the figures) and ``quality.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from monai_ultraad.errors import InputDataError
from monai_ultraad.io_utils import atomic_write_json, atomic_write_text
from monai_ultraad.quality import assess_file, assess_frames

DETECTORS = {"colour_overlay": "doppler", "marks": "marks"}  # detector -> bus_uclm labels.csv column


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (nan, nan) when n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def precision_recall(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Precision and recall of ``scores >= threshold`` against ``truth``, with counts and Wilson intervals."""
    flagged = scores >= threshold
    tp, fp, fn = int((flagged & truth).sum()), int((flagged & ~truth).sum()), int((~flagged & truth).sum())
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": int((~flagged & ~truth).sum()),
        "precision": tp / (tp + fp) if tp + fp else math.nan, "precision_ci95": wilson(tp, tp + fp),
        "recall": tp / (tp + fn) if tp + fn else math.nan, "recall_ci95": wilson(tp, tp + fn),
    }


def choose_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The flag threshold with the highest F1 on these images (ties: the higher threshold, fewer false alarms)."""
    best, best_f1 = float(scores.max(initial=0.0)) + 1.0, -1.0
    for t in sorted(set(scores[scores > 0].tolist())):
        pr = precision_recall(scores, truth, t)
        f1 = 2 * pr["tp"] / (2 * pr["tp"] + pr["fp"] + pr["fn"]) if pr["tp"] else 0.0
        if f1 >= best_f1:
            best, best_f1 = t, f1
    return float(best)


def split_patients(patients: list[str], seed: int = 0) -> tuple[set[str], set[str]]:
    """Seeded halves of the patient list: (threshold patients, held-back patients)."""
    order = sorted(set(patients))
    np.random.default_rng(seed).shuffle(order)
    half = len(order) // 2
    return set(order[:half]), set(order[half:])


def _rows(table: Path) -> list[dict]:
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def score_uclm(root: Path) -> list[dict]:
    rows = _rows(root / "labels.csv")
    out = []
    for r in rows:
        q = assess_file(root / r["image"])
        out.append({"image": Path(r["image"]).name, "patient": r["patient"], "label": r["label"],
                    "doppler": r["doppler"] == "True", "marks": r["marks"] == "True",
                    **{f"{n}_score": q.detections[n].score for n in DETECTORS}})
    return out


def measure_uclm(records: list[dict], seed: int = 0) -> dict:
    tune, held = split_patients([r["patient"] for r in records], seed)
    result = {"split_seed": seed, "threshold_patients": sorted(tune), "held_back_patients": sorted(held)}
    for det, column in DETECTORS.items():
        s = np.array([r[f"{det}_score"] for r in records])
        y = np.array([r[column] for r in records])
        in_tune = np.array([r["patient"] in tune for r in records])
        thr = choose_threshold(s[in_tune], y[in_tune])
        result[det] = {
            "label_column": column, "chosen_threshold": thr,
            "threshold_patients": {**precision_recall(s[in_tune], y[in_tune], thr), "n_images": int(in_tune.sum()),
                                   "n_positive": int(y[in_tune].sum())},
            "held_back": {**precision_recall(s[~in_tune], y[~in_tune], thr), "n_images": int((~in_tune).sum()),
                          "n_positive": int(y[~in_tune].sum())},
        }
    return result


def fire_rates_bra(root: Path, thresholds: dict[str, float], max_images: int | None = None) -> dict:
    rows = _rows(root / "labels.csv")
    if max_images:
        rows = rows[:: max(1, len(rows) // max_images)][:max_images]
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        q = assess_file(root / r["image"])
        scanner = r["device"].split(" @")[0]
        counts[scanner]["images"] += 1
        for det in DETECTORS:
            counts[scanner][det] += int(q.detections[det].score >= thresholds[det])
    return {s: {"images": c["images"], **{d: {"fired": c[d], "rate": c[d] / c["images"]} for d in DETECTORS}}
            for s, c in sorted(counts.items())}


def fire_dicom(root: Path, thresholds: dict[str, float]) -> list[dict]:
    from monai_ultraad.dicom.reader import read_ultrasound
    from monai_ultraad.inference import analysis_windows

    out = []
    for path in sorted(root.rglob("*.dcm")):
        entry = {"file": str(path.relative_to(root))}
        try:
            image = read_ultrasound(path, frame_step=1, max_frames=None)
        except InputDataError as exc:  # the reader's one-line reason (e.g. JPEG XL cannot be decoded)
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            out.append(entry)
            continue
        windows = analysis_windows(image.tissue_regions, image.rows, image.cols)
        q = assess_frames(image.frames, image.frame_numbers, windows)
        entry.update({"frames": image.number_of_frames, "photometric": image.photometric,
                      "tissue_regions": len(image.tissue_regions)})
        for det in DETECTORS:
            d = q.detections[det]
            entry[det] = {"score": round(d.score, 3), "fired": d.score >= thresholds[det],
                          **({"kind": d.details["kind"]} if d.details.get("kind") else {})}
        out.append(entry)
    return out


def _fmt_ci(pr: dict, key: str) -> str:
    lo, hi = pr[f"{key}_ci95"]
    v = pr[key]
    return "–" if math.isnan(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def to_markdown(result: dict) -> str:
    u = result["bus_uclm"]
    lines = ["# Input gate: detector measurements", "",
             f"Produced by `{result['command']}` in {result['seconds']:.0f} s.", "",
             (f"## BUS-UCLM, patient-disjoint (split seed {u['split_seed']}: thresholds chosen on "
              f"{len(u['threshold_patients'])} patients, reported on {len(u['held_back_patients'])} held-back patients)"),
             "", "| detector (label) | threshold | images (pos.) | precision [95 % CI] | recall [95 % CI] | TP/FP/FN |",
             "|---|---|---|---|---|---|"]
    for det in DETECTORS:
        for part in ("threshold_patients", "held_back"):
            pr = u[det][part]
            lines.append(f"| {det} ({u[det]['label_column']}), {part.replace('_', ' ')} | {pr['threshold']:g} | "
                         f"{pr['n_images']} ({pr['n_positive']}) | {_fmt_ci(pr, 'precision')} | {_fmt_ci(pr, 'recall')}"
                         f" | {pr['tp']}/{pr['fp']}/{pr['fn']} |")
    lines += ["", "## BUS-BRA (no labels): how often each detector fires, per scanner", "",
              "| scanner | images | colour overlay | marks |", "|---|---|---|---|"]
    for scanner, c in result["bus_bra"].items():
        lines.append(f"| {scanner} | {c['images']} | {c['colour_overlay']['fired']} ({c['colour_overlay']['rate']:.0%})"
                     f" | {c['marks']['fired']} ({c['marks']['rate']:.0%}) |")
    lines += ["", "## Real ultrasound DICOM files: what fires", "",
              "| file | frames | photometric | tissue regions | colour overlay (score, kind) | marks (glyphs) |",
              "|---|---|---|---|---|---|"]
    for e in result["dicom"]:
        if "error" in e:
            lines.append(f"| {e['file']} | – | – | – | not read: {e['error']} | – |")
            continue
        c, m = e["colour_overlay"], e["marks"]
        lines.append(f"| {e['file']} | {e['frames']} | {e['photometric']} | {e['tissue_regions']} | "
                     f"{'**fires**' if c['fired'] else 'no'} ({c['score']:g}{', ' + c['kind'] if c['fired'] and 'kind' in c else ''})"
                     f" | {'**fires**' if m['fired'] else 'no'} ({m['score']:g}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--output", default="benchmarks/results/quality")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--max_bra", type=int, default=None, help="score at most this many BUS-BRA images")
    args = parser.parse_args(argv)
    start = time.time()
    data = Path(args.data_dir)
    records = score_uclm(data / "bus_uclm")
    uclm = measure_uclm(records, args.split_seed)
    thresholds = {det: uclm[det]["chosen_threshold"] for det in DETECTORS}
    result = {
        "command": "python -m benchmarks.quality" + (f" --max_bra {args.max_bra}" if args.max_bra else ""),
        "thresholds": thresholds, "bus_uclm": uclm,
        "bus_bra": fire_rates_bra(data / "bus_bra", thresholds, args.max_bra),
        "dicom": fire_dicom(data / "dicom", thresholds),
        "bus_uclm_scores": records,
    }
    result["seconds"] = time.time() - start
    out = Path(args.output)
    atomic_write_json(out / "quality.json", result, nan_as_null=True)
    md = to_markdown(result)
    atomic_write_text(out / "quality.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
