"""Few-shot training time per epoch with and without the frozen-backbone feature cache.

Without the cache every epoch reruns the image tower on every shot (what a naive training loop does); with it the
tower runs once and epochs only run the UltraAD head. Prints one table; writes nothing.

    python -m benchmarks.epoch_time --backbone ViT-L-14-336 --pretrained random --shots 4 --epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch

from monai_ultraad import engine
from monai_ultraad.data import default_data_dir, make_fewshot_split, read_dataset
from monai_ultraad.losses import UltraADLoss
from monai_ultraad.networks import DEFAULT_BACKBONE, ClipBackbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="labels.csv dataset (default: shared bus_uclm)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--pretrained", default="random", help="open_clip tag, local file, or 'random'")
    parser.add_argument("--layers", default=None, help="comma-separated 1-based blocks (default: paper's)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cached_only", action="store_true", help="time only epochs on cached features")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data_dir = args.data_dir or default_data_dir() / "bus_uclm"
    items = read_dataset(data_dir)
    split = make_fewshot_split(items, k=args.shots, seed=0)
    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    random = args.pretrained.lower() == "random"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layers is None:
            backbone = ClipBackbone(args.backbone, None if random else args.pretrained, allow_random_init=random)
        else:
            backbone = ClipBackbone(args.backbone, None if random else args.pretrained, layers, allow_random_init=random)
    n = len(split.shots)
    print(f"backbone {backbone.model_name} ({backbone.weights_id}), {n} shots, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as cache:
        store = engine.build_store(backbone, cache_dir=cache, progress=True)
        t0 = time.perf_counter()
        features = store.get(split.shots)
        first = time.perf_counter() - t0

        model = engine.build_model(backbone, seed=0)
        labels = torch.tensor([it["label"] for it in split.shots])
        masks = engine.training_masks(split.shots, backbone.image_size, backbone.mean, backbone.std)
        model.setup_memory(features, labels)
        loss_fn = UltraADLoss()
        opt = torch.optim.AdamW([p for n_, p in model.named_parameters() if p.requires_grad], lr=engine.TrainConfig.lr)
        slots = torch.arange(n)

        def batches(recompute: bool):
            for idx in torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(args.batch_size):
                if recompute:  # no cache: decode, preprocess and run the image tower again
                    images = torch.stack([store._prepare(split.shots[i]) for i in idx.tolist()])
                    feats = store.compute(images)
                else:
                    feats = engine.VisualFeatures(features.cls_token[idx], features.patch_tokens[idx])
                yield engine.FewShotBatch(feats, masks[idx], labels[idx], slots[idx])

        timings = {}
        for recompute in (False,) if args.cached_only else (False, True):
            seconds = []
            for _ in range(args.epochs):
                t = time.perf_counter()
                engine.train_one_epoch(model, batches(recompute), opt, loss_fn)
                seconds.append(time.perf_counter() - t)
            timings["without cache" if recompute else "with cache"] = seconds

    print(f"one-time feature extraction ({n} images): {first:.1f} s ({first / n:.2f} s/image)")
    print("| training epoch | mean s | std s | epochs |")
    print("|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {np.mean(seconds):.2f} | {np.std(seconds, ddof=1) if len(seconds) > 1 else 0:.2f} | {len(seconds)} |")
    if "without cache" in timings:
        print(f"speed-up: {np.mean(timings['without cache']) / np.mean(timings['with cache']):.1f}x")
    per_epoch = np.mean(timings["with cache"])
    default = engine.TrainConfig()
    print(f"default budget ({default.epochs} epochs, lr {default.lr}): {default.epochs * per_epoch:.1f} s of training "
          "on cached features, plus one validation pass per epoch")


if __name__ == "__main__":
    main()
