"""Start-up of the ``ultraad`` command line against ``python -c 'import torch'``, and the run time of one prediction.

    python -m benchmarks.cli_startup                 # 5 runs of each start-up, 3 of predict
    python -m benchmarks.cli_startup --repeats 9 --predict-repeats 5

Every figure is the wall time of a whole process (what a user waits for), the median over the runs after one
warm-up; the start-up commands run in turn (help, predict help, torch, help, ...) so that a machine that slows down
mid-way slows all of them alike, and the ratio to ``import torch`` is taken run by run. Also counted: the lines a
start-up writes to stderr (a warning such as holoscan's stack-size RuntimeWarning shows there).

``ultraad predict`` runs on one synthetic 256x256 PNG with a random tiny backbone (``UltraAD-Tiny-ViT``, random
weights: the figure is about time only) on the CPU, from process start to exit, so it includes the imports. The
``ultraad`` command is run as ``python -m monai_ultraad.cli`` with this interpreter; ``-m`` puts the working folder
first on the path, so run it from the checkout measured (or, for another checkout, from a neutral folder with
``PYTHONPATH`` set to it: ``cd /tmp && PYTHONPATH=/path/to/other python /path/to/benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ULTRAAD = [sys.executable, "-m", "monai_ultraad.cli"]
STARTUP = {
    "ultraad --help": [*ULTRAAD, "--help"],
    "ultraad predict --help": [*ULTRAAD, "predict", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}
REFERENCE = "python -c 'import torch'"


def _timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds of ``command`` and the number of lines it wrote to stderr; a failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, len(done.stderr.splitlines())


def startup(repeats: int) -> dict[str, dict[str, float]]:
    """Median wall time, median ratio to ``import torch`` and stderr lines of each start-up command."""
    for command in STARTUP.values():  # warm-up: file system caches, .pyc files
        _timed(command)
    times: dict[str, list[float]] = {name: [] for name in STARTUP}
    stderr_lines: dict[str, int] = {}
    for _ in range(repeats):
        for name, command in STARTUP.items():
            seconds, lines = _timed(command)
            times[name].append(seconds)
            stderr_lines[name] = max(stderr_lines.get(name, 0), lines)
    reference = times[REFERENCE]
    return {
        name: {
            "median_s": statistics.median(ts),
            "ratio_to_torch": statistics.median(t / r for t, r in zip(ts, reference, strict=True)),
            "stderr_lines": stderr_lines[name],
        }
        for name, ts in times.items()
    }


def _tiny_checkpoint_and_image(folder: Path) -> tuple[Path, Path]:
    import warnings

    import numpy as np
    from PIL import Image

    from monai_ultraad import engine
    from monai_ultraad.networks import ClipBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone("UltraAD-Tiny-ViT", None, feature_layers=(1, 2, 3, 4), allow_random_init=True,
                                init_seed=0)
    checkpoint = engine.save_checkpoint(folder / "model.pt", engine.build_model(backbone, seed=0), threshold=0.5)
    image = folder / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(image)
    return Path(checkpoint), image


def predict_runtime(repeats: int) -> float:
    """Median wall seconds of ``ultraad predict`` on one image, tiny random backbone, CPU, whole process."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, image = _tiny_checkpoint_and_image(Path(tmp))
        command = [*ULTRAAD, "predict", "--checkpoint", str(checkpoint), "--images", str(image), "--output_dir",
                   str(Path(tmp) / "out"), "--allow_random_init", "--progress", "False", "--device", "cpu"]
        _timed(command)  # warm-up
        return statistics.median(_timed(command)[0] for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="counted runs of each start-up command")
    parser.add_argument("--predict-repeats", type=int, default=3, help="counted runs of ultraad predict (0: skip)")
    args = parser.parse_args(argv)
    rows = startup(args.repeats)
    print(f"start-up, median of {args.repeats} runs (wall seconds of the whole process)")
    print("| command | median s | / import torch | stderr lines |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| `{name}` | {row['median_s']:.2f} | {row['ratio_to_torch']:.2f} | {row['stderr_lines']} |")
    if args.predict_repeats > 0:
        seconds = predict_runtime(args.predict_repeats)
        print(f"\n`ultraad predict`, one 256x256 PNG, UltraAD-Tiny-ViT (random weights), CPU, whole process: "
              f"median {seconds:.2f} s of {args.predict_repeats} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
