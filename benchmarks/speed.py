"""Speed of UltraAD: full inference against the bare backbone, and few-shot training time on cached features.

    python -m benchmarks.speed --backbone ViT-L-14-336 --pretrained random              # CPU, fp32
    python -m benchmarks.speed --device cuda --precision bf16 --batch 64 --compile      # a GPU, bf16 weights

Prints a table and the targets (head overhead <= 10% of backbone time; k=16 training under a minute on a 2-core
CPU; on a GPU >= 700 images/s end to end at batch 64). Training is timed in every ``--train-precision`` (fp32 and
bf16 by default), and with ``--train-validation`` also with validation after every epoch as ``fit`` runs by
default. Inference timings are medians over ``--repeats`` after one warm-up.
Random weights time exactly like real ones (same shapes and operations); the numbers are about speed only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from monai_ultraad import engine
from monai_ultraad.data import default_data_dir, make_fewshot_split, read_dataset
from monai_ultraad.io_utils import atomic_write_json
from monai_ultraad.networks import DEFAULT_BACKBONE, ClipBackbone, VisualFeatures
from monai_ultraad.runtime import tune_cpu_allocator

PRECISIONS = ("fp32", "autocast-bf16", "bf16")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call (compilation, allocator, caches)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(args: argparse.Namespace) -> tuple[ClipBackbone, torch.nn.Module]:
    random = args.pretrained.lower() == "random"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # None: four evenly spaced taps, which for the 24-block ViT-L is the paper's 6, 12, 18, 24
        backbone = ClipBackbone(args.backbone, None if random else args.pretrained, None, allow_random_init=random)
    model = engine.build_model(backbone, seed=0)
    k = 16  # memory of k=16 shots per class (only class tokens are stored): the largest few-shot setting
    g = torch.Generator().manual_seed(0)
    shots = VisualFeatures(torch.randn(3 * k, backbone.embed_dim, generator=g), torch.zeros(3 * k, 1, 1, 1))
    model.setup_memory(shots, torch.arange(3).repeat_interleave(k))
    model.eval().to(args.device)
    if args.precision == "bf16":
        backbone.visual.to(torch.bfloat16)
    if args.channels_last:
        backbone.visual.to(memory_format=torch.channels_last)
    return backbone, model


def inference_timings(args: argparse.Namespace, backbone: ClipBackbone, model: torch.nn.Module) -> dict[str, float]:
    autocast = (torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16)
                if args.precision == "autocast-bf16" else contextlib.nullcontext())

    def runner(fn: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], object]:
        if args.compile:
            fn = torch.compile(fn, mode=args.compile_mode)

        def call(x: torch.Tensor) -> object:
            with torch.inference_mode(), autocast:
                return fn(x)
        return call

    bare = runner(lambda x: backbone.encode_image(x))
    full = runner(lambda x: model(x))
    out: dict[str, float] = {}
    size = backbone.image_size
    for batch in sorted({1, args.batch}):
        images = torch.randn(batch, 3, size, size, device=args.device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        t_bare = timed(lambda x=images: bare(x), args.device, args.repeats)
        t_full = timed(lambda x=images: full(x), args.device, args.repeats)
        out[f"batch{batch}_backbone_s"] = t_bare
        out[f"batch{batch}_ultraad_s"] = t_full
        out[f"batch{batch}_backbone_img_per_s"] = batch / t_bare
        out[f"batch{batch}_ultraad_img_per_s"] = batch / t_full
        out[f"batch{batch}_head_overhead_pct"] = 100.0 * (t_full - t_bare) / t_bare
    return out


def training_timing(args: argparse.Namespace, backbone: ClipBackbone) -> dict[str, float]:
    """k shots per class of real BUS-UCLM images: features once (timed apart), then ``epochs`` of head training.

    Timed per training precision, without per-epoch validation (the pure training cost), and, with
    ``--train-validation``, also as ``fit`` runs by default: validation after every epoch, best epoch and threshold.
    """
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    items = read_dataset(data_dir / "bus_uclm")
    split = make_fewshot_split(items, k=args.train_shots, seed=0)
    store = engine.build_store(backbone, cache_dir=args.cache_dir or True, device=args.device, progress=True)
    t0 = time.perf_counter()
    store.get(split.shots)
    if args.train_validation:
        store.get(split.validation)
    out: dict[str, float] = {"train_shots_total": len(split.shots), "train_epochs": args.epochs,
                             "train_features_s": time.perf_counter() - t0,
                             "train_validation_images": len(split.validation) if args.train_validation else 0}
    runs = [(p, []) for p in args.train_precision]
    if args.train_validation:
        runs += [(p, split.validation) for p in args.train_precision]
    for precision, validation in runs:
        model = engine.build_model(backbone, seed=0)
        config = engine.TrainConfig(epochs=args.epochs, seed=0, precision=precision)
        t1 = time.perf_counter()
        result = engine.fit(model, split.shots, validation, store, config, progress=True)
        key = f"train_{precision}" + ("_with_validation" if validation else "")
        out[f"{key}_s"] = time.perf_counter() - t1
        out[f"{key}_s_per_epoch"] = statistics.mean(result.epoch_seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--pretrained", default="random", help="open_clip tag, local file, or 'random'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and the full model")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                        help="e.g. reduce-overhead (CUDA graphs) for batch-1 latency")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-shots", type=int, default=16, help="k per class for the training timing (0: skip)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-precision", nargs="+", choices=engine.PRECISIONS, default=list(engine.PRECISIONS),
                        help="training precisions to time (TrainConfig.precision)")
    parser.add_argument("--train-validation", action="store_true",
                        help="also time training with validation after every epoch, as fit runs by default")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.batch = args.batch or (64 if args.device.startswith("cuda") else 8)
    backbone, model = build(args)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{backbone.model_name} ({backbone.weights_id}) on {where}, {args.precision}"
          f"{', compiled (' + args.compile_mode + ')' if args.compile else ''}"
          f"{', channels-last' if args.channels_last else ''}")
    figures: dict[str, float | str] = {"backbone": backbone.model_name, "weights": backbone.weights_id,
                                       "device": where, "precision": args.precision, "compile": args.compile}
    if not args.skip_inference:
        figures.update(inference_timings(args, backbone, model))
        for batch in sorted({1, args.batch}):
            print(f"batch {batch:>3}: backbone {figures[f'batch{batch}_backbone_s'] * 1000:9.1f} ms "
                  f"({figures[f'batch{batch}_backbone_img_per_s']:7.1f} img/s) | UltraAD "
                  f"{figures[f'batch{batch}_ultraad_s'] * 1000:9.1f} ms "
                  f"({figures[f'batch{batch}_ultraad_img_per_s']:7.1f} img/s) | head overhead "
                  f"{figures[f'batch{batch}_head_overhead_pct']:5.1f}% (target <= 10%)")
    if args.train_shots:
        figures["allocator_tuned"] = tune_cpu_allocator()  # as every training entry point does
        if args.precision == "bf16":
            backbone.visual.float()
        figures.update(training_timing(args, backbone))
        n, epochs = figures["train_shots_total"], args.epochs
        for precision in args.train_precision:
            for suffix, what in (("", "no validation"), ("_with_validation", "validation after every epoch")):
                key = f"train_{precision}{suffix}"
                if f"{key}_s" in figures:
                    print(f"training k={args.train_shots} ({n} shots), {epochs} epochs on cached features, {precision}, "
                          f"{what}: {figures[f'{key}_s']:.1f} s ({figures[f'{key}_s_per_epoch']:.2f} s per epoch of "
                          f"training; target < 60 s on a 2-core CPU)")
        print(f"features of the shots{' and validation images' if args.train_validation else ''}, once: "
              f"{figures['train_features_s']:.1f} s")
    if args.json:
        atomic_write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
