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


def format_row(name: str, metrics: dict[str, Any]) -> str:
    return f"| {name} | " + " | ".join(f"{float(metrics.get(k, float('nan'))):.3f}" for k in FLOOR_METRICS) + " |"


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default=TINY_BACKBONE)
    parser.add_argument("--layers", default="1,2,3,4")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ka = prepare(Path(tmp), tiny_backbone(name=args.backbone, layers=tuple(int(x) for x in args.layers.split(","))))
        overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
        t0 = time.perf_counter()
        metrics, result, _ = run_ultraad(ka, engine.TrainConfig(seed=SEED, **overrides))
        print("| setting | " + " | ".join(FLOOR_METRICS) + " |")
        print(format_row(f"{args.backbone} {overrides or 'defaults'}", metrics))
        print(f"features {ka.timings['features_s']:.1f} s, fit+test {time.perf_counter() - t0:.1f} s, "
              f"best epoch {result.best_epoch}, threshold {result.threshold:.3f}")
