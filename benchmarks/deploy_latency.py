"""Latency of the deploy app's per-image work: decode, UltraAD, SEG + SR + overlay writing.

Measures a single-frame ultrasound image and the 65-frame cine loop of ../shared/data/dicom (fo-dicom/DIRW0007.dcm,
JPEG baseline), in process, stage by stage, as the app's operators do it: frames streamed from the file through
:class:`monai_ultraad.inference.Predictor` (decode and UltraAD interleave; "decode" is the time spent in the frame
iterator), float16 heatmaps spooled to disk per frame (:class:`monai_ultraad.heatmap_spool.HeatmapSpool`, in the
output folder as the app does), then SEG + SR, and the overlay from the frames decoded again. (The app also writes
the viewer SEGs and the viewer SR; tests/deploy/test_cine_memory.py holds every step of the app's chain to its memory
budget.) Prints a table; writes DICOM objects only into a temporary folder.

``--memory`` instead runs each case in a fresh process and reports its peak resident memory (``ru_maxrss``) and the
part above the process after model loading: a single image, the 120-frame cine of pydicom-data
(color3d_jpeg_baseline.dcm) at 30, 60 and 120 frames (does memory grow with loop length?) and a rejected file
(that cine cut to 64 KiB: refused when opened, before any frame is decoded).

    python -m benchmarks.deploy_latency --backbone ViT-L-14-336 --repeats 3
    python -m benchmarks.deploy_latency --checkpoint bundle/models/model.pt
    python -m benchmarks.deploy_latency --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch

from monai_ultraad import engine
from monai_ultraad.data import default_data_dir
from monai_ultraad.dicom.reader import open_ultrasound
from monai_ultraad.dicom.writers import AlgorithmInfo, UIDFactory, write_overlay, write_report, write_segmentations
from monai_ultraad.heatmap_spool import HeatmapSpool
from monai_ultraad.inference import Predictor, analysis_windows
from monai_ultraad.networks import ClipBackbone, UltraAD
from monai_ultraad.visualize import iter_overlay_frames

CASES = {"single frame (US1_UNCR, 480x640 RGB)": "pydicom-data/US1_UNCR.dcm",
         "65-frame cine (DIRW0007, 456x576 JPEG)": "fo-dicom/DIRW0007.dcm"}


TRUNCATED = "truncated:"  # a case made by cutting the named file to 64 KiB

MEMORY_CASES = [
    ("single frame (US1_UNCR, 480x640 RGB)", "pydicom-data/US1_UNCR.dcm", None),
    ("cine, 30 of 120 frames (color3d, 480x640 JPEG)", "pydicom-data/color3d_jpeg_baseline.dcm", 30),
    ("cine, 60 of 120 frames", "pydicom-data/color3d_jpeg_baseline.dcm", 60),
    ("cine, all 120 frames", "pydicom-data/color3d_jpeg_baseline.dcm", None),
    ("rejected (color3d cut to 64 KiB: truncated)", TRUNCATED + "pydicom-data/color3d_jpeg_baseline.dcm", None),
]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def build_model(args) -> UltraAD:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.checkpoint:
            return engine.load_checkpoint(args.checkpoint, allow_random_init=True, device=args.device)[0]
        layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
        backbone = ClipBackbone(args.backbone, None, layers, allow_random_init=True) if layers else \
            ClipBackbone(args.backbone, None, allow_random_init=True)
        model = UltraAD(backbone).to(args.device).eval()
        feats = backbone.encode_image(torch.randn(3, 3, backbone.image_size, backbone.image_size, device=args.device))
        model.setup_memory(feats, torch.tensor([0, 1, 2]))
        return model


def run_case(model, path: Path, out: Path, args) -> dict[str, float]:
    times = {"decode": 0.0}

    def timed(frames):  # the time spent decoding, inside the streamed loop
        iterator = iter(frames)
        while True:
            t = time.perf_counter()
            frame = next(iterator, None)
            times["decode"] += time.perf_counter() - t
            if frame is None:
                return
            yield frame

    t = time.perf_counter()
    image = open_ultrasound(path, frame_step=args.frame_step, max_frames=getattr(args, "max_frames", None))
    windows = analysis_windows(image.tissue_regions, image.rows, image.cols)
    times["decode"] += time.perf_counter() - t
    t = time.perf_counter()
    predictor = Predictor(model, 0.5, batch_size=args.batch_size)
    spool = HeatmapSpool(out)  # as the app: the heatmaps on disk, read back a frame at a time by the writers
    preds = [spool.spool(p.compact()) for p in predictor.predict_frames(timed(image.iter_frames()),
                                                                        image.frame_numbers, path.name, windows)]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    times["UltraAD"] = time.perf_counter() - t - times["decode"]
    algorithm = AlgorithmInfo(version="bench", backbone=model.backbone.model_name, weights_id=model.backbone.weights_id,
                              checkpoint_sha256="0" * 64, random_weights=model.random_weights)
    source = pydicom.dcmread(path, defer_size="1 MB")  # as the app's writers read it
    uids = UIDFactory(None)
    t = time.perf_counter()
    _, binary = write_segmentations(source, preds, 0.5, out, algorithm, uids)
    write_report(source, pydicom.dcmread(binary, defer_size="64 KB"), preds, 0.5, out, algorithm, uids)
    overlays = iter_overlay_frames(image.iter_frames(), [p.heatmap for p in preds], 0.5)  # as the app: streamed
    write_overlay(source, overlays, out, algorithm, uids, frame_numbers=[p.frame_number for p in preds])
    times["write SEG+SR+SC"] = time.perf_counter() - t
    spool.close()
    times["total"] = sum(times.values())
    times["frames"] = len(preds)
    return times


def measure_one(model, rel: str, args) -> dict:
    """One case in this (fresh) process: peak RSS after model loading, then after the case."""
    from monai_ultraad.dicom.reader import UnsupportedDicomError

    before = _peak_rss_mb()
    outcome = "processed"
    with tempfile.TemporaryDirectory() as tmp:
        path = default_data_dir() / "dicom" / rel.removeprefix(TRUNCATED)
        if rel.startswith(TRUNCATED):
            cut = Path(tmp) / "truncated.dcm"
            cut.write_bytes(path.read_bytes()[: 64 * 1024])
            path = cut
        try:
            times = run_case(model, path, Path(tmp), args)
        except UnsupportedDicomError as exc:
            times, outcome = {"frames": 0, "total": 0.0}, f"rejected: {exc.reason[:60]}"
    return {"rss_after_model_mb": before, "peak_rss_mb": _peak_rss_mb(), "outcome": outcome, **times}


def memory_table(args) -> None:
    print("| case | frames | outcome | peak RSS MB | above model MB | total s |")
    print("|---|---|---|---|---|---|")
    for name, rel, max_frames in MEMORY_CASES:
        cmd = [sys.executable, "-m", "benchmarks.deploy_latency", "--one", rel, "--backbone", args.backbone,
               "--device", args.device, "--batch_size", str(args.batch_size)]
        if args.layers:
            cmd += ["--layers", args.layers]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        if max_frames:
            cmd += ["--max_frames", str(max_frames)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {int(r['frames'])} | {r['outcome']} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['rss_after_model_mb']:.0f} | {r['total']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="UltraAD-Tiny-ViT")
    parser.add_argument("--layers", default=None, help="1-based blocks (default: paper's; tiny: 1,2,3,4)")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint instead of a random head")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frame_step", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max_frames", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="peak RSS per case, each in a fresh process")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one --memory case
    args = parser.parse_args()
    if args.backbone == "UltraAD-Tiny-ViT" and not args.layers:
        args.layers = "1,2,3,4"
    if args.memory:
        memory_table(args)
        return
    model = build_model(args)
    if args.one:
        print(json.dumps(measure_one(model, args.one, args)))
        return
    data = default_data_dir() / "dicom"
    print(f"backbone {model.backbone.model_name} ({model.backbone.weights_id}) on {args.device}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, frame step {args.frame_step}")
    print("| case | frames | decode s | UltraAD s | write s | total s | per frame ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in CASES.items():
            runs = [run_case(model, data / rel, Path(tmp), args) for _ in range(args.repeats)]
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            std = float(np.std([r["total"] for r in runs]))
            print(f"| {name} | {int(mean['frames'])} | {mean['decode']:.2f} | {mean['UltraAD']:.2f} | "
                  f"{mean['write SEG+SR+SC']:.2f} | {mean['total']:.2f} ± {std:.2f} | "
                  f"{1000 * mean['total'] / mean['frames']:.0f} |")


if __name__ == "__main__":
    main()
