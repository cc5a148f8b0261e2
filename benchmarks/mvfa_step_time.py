"""Cost of one MVFA training step (batch 1, as the authors train), with and without the per-view prefix cache.

    python -m benchmarks.mvfa_step_time --backbone ViT-B-16 --layers 3,6,9,12          # CPU, fp32
    python -m benchmarks.mvfa_step_time --backbone UltraAD-Tiny-ViT --layers 1,2,3,4

MVFA's adapters change every block after the first adapted one, so a step must run those blocks forward and
backward; only the blocks up to the first adapter (``MVFA.prefix``) can be cached per (image, view). The step is
timed both ways: ``cached`` reads the prefix stream, ``uncached`` recomputes it. Medians over ``--repeats`` after one
warm-up, on random weights (they time exactly like real ones). Writes a JSON next to the printed table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from monai_ultraad.io_utils import atomic_write_json
from monai_ultraad.networks import ClipBackbone
from monai_ultraad.networks.mvfa import MVFA, mvfa_loss, view


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--layers", default="3,6,9,12")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone(args.backbone, None, [int(v) for v in args.layers.split(",")], allow_random_init=True)
    backbone.to(args.device)
    model = MVFA(backbone).to(args.device)
    size = backbone.image_size
    image = torch.randn(1, 3, size, size, device=args.device)
    mask = torch.zeros(1, 1, size, size, device=args.device)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    label = torch.ones(1, device=args.device)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    stream = model.prefix(view(image, 1))

    def step(cached: bool) -> None:
        s = stream if cached else model.prefix(view(image, 1))
        parts = mvfa_loss(model, model.adapted_tokens(s), view(mask, 1), label)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()

    def score() -> None:
        with torch.no_grad():
            model.raw_branches(model.adapted_tokens(stream))

    record = {
        "backbone": args.backbone, "image_size": size, "adapted_blocks": list(model.levels),
        "blocks": len(backbone.visual.transformer.resblocks), "cached_blocks": model.prefix_blocks,
        "device": args.device, "threads": torch.get_num_threads(), "precision": "fp32",
        "load_average_1min": os.getloadavg()[0], "repeats": args.repeats,
        "step_seconds_cached": _median(lambda: step(True), args.repeats),
        "step_seconds_uncached": _median(lambda: step(False), args.repeats),
        "prefix_seconds": _median(lambda: model.prefix(image), args.repeats),
        "forward_no_grad_seconds": _median(score, args.repeats),
    }
    for key, value in record.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.out:
        atomic_write_json(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
