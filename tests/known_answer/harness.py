"""The known-answer run: few-shot UltraAD (or a benchmark method) on the synthetic set, scored on its test split.

Used by the tests (with floors) and by ``python -m tests.known_answer.harness`` (prints the table for README).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ultraad import engine
from monai_ultraad.data import make_fewshot_split, read_dataset
from monai_ultraad.networks import TINY_BACKBONE, ClipBackbone

#: The metrics the floors are set on (names as in :class:`monai_ultraad.metrics.UltraADEvaluator`).
FLOOR_METRICS = ("pixel_auroc", "dice", "image_auroc", "benign_malignant_auroc", "balanced_accuracy")
#: The known-answer protocol: 40 images per class, 8 shots per class, seed 0, the defaults of engine.TrainConfig.
PER_CLASS, SHOTS, SEED = 40, 8, 0


@dataclass
class KnownAnswerSet:
    root: Path
    items: list[dict]
    split: Any
    backbone: ClipBackbone
    store: Any
    timings: dict[str, float] = field(default_factory=dict)


def tiny_backbone(seed: int = 0, name: str = TINY_BACKBONE, layers=(1, 2, 3, 4)) -> ClipBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(name, None, feature_layers=layers, allow_random_init=True, init_seed=seed)


def prepare(root: Path, backbone: ClipBackbone | None = None, per_class: int = PER_CLASS, shots: int = SHOTS,
            seed: int = SEED) -> KnownAnswerSet:
    """Generate the set under ``root`` (if absent), split it (patient-disjoint, seeded) and cache its features."""
    from tests.known_answer.synthetic import make_dataset

    if not (root / "labels.csv").exists():
        make_dataset(root, per_class=per_class, seed=seed)
    items = read_dataset(root)
    split = make_fewshot_split(items, k=shots, seed=seed, split_seed=seed)
    backbone = backbone or tiny_backbone()
    store = engine.build_store(backbone, cache_dir=None, progress=False)
    t0 = time.perf_counter()
    store.get(items, desc="features")
    return KnownAnswerSet(root, items, split, backbone, store, {"features_s": time.perf_counter() - t0})


def run_ultraad(ka: KnownAnswerSet, config: engine.TrainConfig | None = None, seed: int = SEED,
                **model_kwargs: Any) -> tuple[dict[str, Any], engine.FitResult, Any]:
    """Train UltraAD with ``engine.fit`` at ``config`` (default: the library defaults); test metrics, fit, model."""
    model = engine.build_model(ka.backbone, seed=seed, **model_kwargs)
    config = config or engine.TrainConfig(seed=seed)
    result = engine.fit(model, ka.split.shots, ka.split.validation, ka.store, config, progress=False)
    metrics, _ = engine.evaluate(model, ka.split.test, ka.store, result.threshold, progress=False)
    return metrics, result, model


def run_method(ka: KnownAnswerSet, key: str, seed: int = SEED, **options: Any) -> dict[str, Any]:
    """A benchmark method (``benchmarks.methods.METHODS[key]``, at its default options unless given) fitted and
    scored by the benchmark's own protocol (``benchmarks.protocol.run_cell``) on the test split; its metrics, with
    None where the method has no such output."""
    from benchmarks import protocol
    from benchmarks.methods import METHODS

    method = METHODS[key](ka.backbone, engine.CLASS_NAMES, **options)
    data = protocol.fit_data(ka.split, ka.store, ka.backbone, seed)
    target = protocol.load_target("known_answer_test", ka.split.test, "synthetic known-answer test split", ka.store)
    record, _ = protocol.run_cell(method, data, [target], ka.store, batch_size=32, keep_ids=set())
    return record["targets"]["known_answer_test"]["metrics"]


def corrupting(kind: str | None, fit_data):
    """``benchmarks.protocol.fit_data`` whose shots are corrupted: ``labels`` rotated (normal -> benign ->
    malignant -> normal) or ``masks`` transposed (the tensors and, for learners that read them, the shots' mask
    files); a learner that learns from them must fall under its floors."""

    def corrupted(*args, **kwargs):
        data = fit_data(*args, **kwargs)
        if kind == "labels":
            data.labels = (data.labels + 1) % 3
        elif kind == "masks":
            data.masks = data.masks.transpose(-1, -2).contiguous()
            data.shot_items = [transposed_mask(it) for it in data.shot_items]  # for learners that read the files
        elif kind is not None:
            raise ValueError(f"unknown corruption {kind!r}: labels or masks")
        return data

    return corrupted


def transposed_mask(item: dict) -> dict:
    """``item`` with its mask file replaced by a transposed copy (written beside the set, in ``masks_transposed``)."""
    if not item.get("mask"):
        return item
    import numpy as np
    from PIL import Image

    src = Path(item["mask"])
    dst = src.parent.parent / "masks_transposed" / src.name
    dst.parent.mkdir(exist_ok=True)
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(src)).T)).save(dst)
    return {**item, "mask": str(dst)}


def format_row(name: str, metrics: dict[str, Any]) -> str:
    cells = ["–" if metrics.get(k) is None else f"{float(metrics[k]):.3f}" for k in FLOOR_METRICS]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    import argparse
    import logging
    import tempfile

    import numpy as np
    import pytest
    import torch

    from tests.known_answer.variants import VARIANTS, broken

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default=TINY_BACKBONE)
    parser.add_argument("--layers", default="1,2,3,4")
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed draws its own set, shots and head")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--variants", action="store_true", help=f"also the broken variants {VARIANTS}")
    parser.add_argument("--methods", default="", help="comma-separated benchmark method keys to run as well")
    parser.add_argument("--corrupt", choices=("labels", "masks"), default=None,
                        help="train the --methods on corrupted shots (rotated labels or transposed masks)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and fair to other jobs
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    keys = (*FLOOR_METRICS, "ece")
    print("| run | " + " | ".join(keys) + " |")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            layers = tuple(int(x) for x in args.layers.split(","))
            ka = prepare(Path(tmp), tiny_backbone(name=args.backbone, layers=layers), seed=seed)
            t0 = time.perf_counter()
            metrics, result, _ = run_ultraad(ka, engine.TrainConfig(seed=seed, **overrides), seed=seed)
            rows.append([metrics[k] for k in keys])
            print(f"| seed {seed} {args.backbone} {overrides or 'defaults'} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys)
                  + f" | ({time.perf_counter() - t0:.1f} s, best epoch {result.best_epoch}, threshold "
                  f"{result.threshold:.3f}, calibration {getattr(result, 'calibration', None)})", flush=True)
            for variant in VARIANTS if args.variants else ():
                patch = pytest.MonkeyPatch()
                with broken(variant, patch) as model_kwargs:
                    m, _, _ = run_ultraad(ka, engine.TrainConfig(seed=seed, **overrides), seed=seed, **model_kwargs)
                patch.undo()
                print(f"| seed {seed} {variant} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |", flush=True)
            from benchmarks import protocol

            protocol.fit_data = corrupting(args.corrupt, protocol.fit_data)
            for key in filter(None, args.methods.split(",")):
                t0 = time.perf_counter()
                try:
                    print(format_row(f"seed {seed} benchmark method {key}", run_method(ka, key, seed=seed)),
                          f"({time.perf_counter() - t0:.1f} s)", flush=True)
                except Exception as exc:  # noqa: BLE001 - report and go on with the next method
                    print(f"| seed {seed} benchmark method {key} | failed: {exc!r} |", flush=True)
    if len(rows) > 1:
        a = np.array(rows)
        print("| mean ± std | " + " | ".join(f"{mu:.3f} ± {sd:.3f}" for mu, sd in zip(a.mean(0), a.std(0))) + " |")


if __name__ == "__main__":
    main()
