"""Per-file outcome and dciodvfy totals of one deploy-app run over a study folder (e.g. the 29 real files).

Reads the run's ``ultraad_run.json`` and validates every DICOM object it lists with dciodvfy (dicom3tools). An error
is *excused* only when it quotes one of its source's own UIDs (a source UID that is itself invalid, which the object
must carry or reference as it is) or is dciodvfy's summary line for such a value; every other error is *unexplained*.
Prints a Markdown table per source file and the totals.

    python deploy_app --allow-random-init --deterministic-uids test -i ../shared/data/dicom -o /tmp/out -m model.pt
    python -m benchmarks.deploy_corpus_report --input ../shared/data/dicom --out /tmp/out
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pydicom

SUMMARY_LINE = "Error - Dicom dataset contains invalid data values for Value Representations"


def _source_uids(path: Path) -> set[str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a file the app refused: no UIDs to excuse
        return set()
    return {str(ds.get(k)) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if ds.get(k)}


def _header(path: Path) -> tuple[str, str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(getattr(ds.SOPClassUID, "name", ds.SOPClassUID)), str(ds.get("NumberOfFrames") or 1)
    except Exception:  # noqa: BLE001
        return "-", "-"


def validate(path: Path, uids: set[str]) -> tuple[int, int, int]:
    """(excused errors, unexplained errors, warnings) of one object."""
    lines = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False).stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = sum(1 for line in lines if line.startswith("Warning"))
    excused = [e for e in errors if any(f'"{u}"' in e or f"<{u}>" in e for u in uids)]
    rest = [e for e in errors if e not in excused]
    if excused:
        summary = [e for e in rest if e == SUMMARY_LINE]
        excused += summary
        rest = [e for e in rest if e != SUMMARY_LINE]
    for e in rest:
        print(f"  unexplained: {path.name}: {e}", file=sys.stderr)
    return len(excused), len(rest), warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="the run's input folder")
    parser.add_argument("--out", type=Path, required=True, help="the run's output folder (with ultraad_run.json)")
    args = parser.parse_args()
    if not shutil.which("dciodvfy"):
        sys.exit("dciodvfy not found (apt-get install dicom3tools)")
    report = json.loads((args.out / "ultraad_run.json").read_text())
    failed = {f["file"]: f["reason"] for f in report["failed"]}
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    warned = Counter()
    for w in report.get("warnings", []):
        warned[w.get("file", "")] += 1
    totals = Counter()
    print("| file | SOP class | frames | outcome | objects (DICOM) | dciodvfy errors: excused / unexplained | warnings |")
    print("|---|---|---|---|---|---|---|")
    for name in sorted({*report["processed"], *failed, *skipped}):
        path = args.input / name
        if name in skipped:
            print(f"| {name} | - | - | skipped: {skipped[name]} | 0 | - | - |")
            totals["skipped"] += 1
            continue
        sop, frames = _header(path)
        files = report["outputs_by_source"].get(name, [])
        dicom = [f for f in files if f.endswith(".dcm")]
        counts = Counter()
        uids = _source_uids(path)
        for f in dicom:
            excused, unexplained, warnings = validate(args.out / f, uids)
            counts.update(excused=excused, unexplained=unexplained, warnings=warnings)
        outcome = "processed" if name in report["processed"] else f"failed: {failed[name]}"
        note = f" ({warned[name]} run warning(s))" if warned[name] else ""
        print(f"| {name} | {sop} | {frames} | {outcome}{note} | {len(files)} ({len(dicom)}) | "
              f"{counts['excused']} / {counts['unexplained']} | {counts['warnings']} |")
        totals.update(counts)
        totals["objects"] += len(files)
        totals["dicom"] += len(dicom)
        totals["processed" if name in report["processed"] else "failed"] += 1
    print()
    print(f"processed {totals['processed']}, failed {totals['failed']}, skipped {totals['skipped']}; "
          f"{totals['objects']} objects, {totals['dicom']} DICOM; dciodvfy error lines: {totals['excused']} excused "
          f"(the sources' own invalid UIDs), {totals['unexplained']} unexplained; warning lines {totals['warnings']}; "
          f"exit code {report.get('exit_code')}")


if __name__ == "__main__":
    main()
