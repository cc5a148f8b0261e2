"""Does removing detected calliper marks before inference change UltraAD's answers? Measured, not assumed.

A few-shot UltraAD is trained once (shots and validation from BUS-UCLM training patients, as everywhere), then the
patient-disjoint test images are scored three times: as they are, with the detected marks inpainted (biharmonic),
and with them median-filled ("mask"); only images on which the marks detector fires are changed. Reported: the
metrics on all test images and on those with marks (the ``marks`` column), and where the maps peak (fraction of
each map's top-1 % pixels on the detected marks, see benchmarks/shortcut_audit.py).

    python -m benchmarks.mark_removal                                # tiny random backbone: runs anywhere, says so
    python -m benchmarks.mark_removal --backbone ViT-B-16 --pretrained /models/ViT-B-16.bin --feature_layers 3,6,9,12

The processed copies are written under --work (default: a temporary folder), never into the data folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.shortcut_audit import MARK_MARGIN, top_fraction_on
from monai_ultraad import engine
from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.data import make_fewshot_split, read_dataset
from monai_ultraad.data.transforms import load_image_array
from monai_ultraad.io_utils import atomic_write_json, atomic_write_text
from monai_ultraad.networks import ClipBackbone, is_random_init
from monai_ultraad.quality import detect_marks
from monai_ultraad.quality.mark_removal import remove_marks

METRICS = ("image_auroc", "balanced_accuracy", "benign_malignant_auroc", "pixel_auroc", "dice")


def processed_items(items: list[dict], variant: str, folder: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The test items with marked images replaced by processed PNG copies; and the detected marks per image id."""
    from scipy import ndimage as ndi

    out, marks = [], {}
    folder.mkdir(parents=True, exist_ok=True)
    for it in items:
        rgb = (load_image_array(it["image"]) * 255).round().astype(np.uint8)
        found = detect_marks(rgb)
        if not found.flagged:
            out.append(it)
            continue
        marks[str(it["id"])] = ndi.binary_dilation(found.mask, iterations=MARK_MARGIN)
        if variant == "original":
            out.append(it)
            continue
        path = folder / f"{Path(str(it['image'])).stem}.png"
        Image.fromarray(remove_marks(rgb, found.mask, variant)).save(path)
        out.append({**it, "image": str(path)})
    return out, marks


def score(model, items, store, threshold, marks) -> dict:
    samples_batches = []
    for chunk, feats in store.iter_batches(items, batch_size=16):
        samples_batches.append((feats, engine.load_eval_samples(chunk)))
    metrics, predictions, maps = engine.evaluate_features(model, samples_batches, threshold=threshold, keep_maps=True)
    ids = [str(s.item["id"]) for _, ss in samples_batches for s in ss]
    on_marks = [top_fraction_on(m, marks[i]) for i, m in zip(ids, maps) if i in marks and marks[i].shape == m.shape]
    marked = [k for k, it in enumerate(items) if str(it.get("marks", "")).lower() == "true"]
    sub_items = [items[k] for k in marked]
    sub_metrics = {}
    if sub_items:
        sub_batches = [(f, engine.load_eval_samples(c)) for c, f in store.iter_batches(sub_items, batch_size=16)]
        sub_metrics, _, _ = engine.evaluate_features(model, sub_batches, threshold=threshold)
    return {"all": {k: metrics.get(k) for k in METRICS}, "marks_subset": {k: sub_metrics.get(k) for k in METRICS},
            "n_images": len(items), "n_marks_subset": len(sub_items),
            "top1_on_marks": float(np.mean(on_marks)) if on_marks else None, "n_maps_with_detected_marks": len(on_marks),
            "mean_p_abnormal_marks_subset": float(np.mean([1 - p["probabilities"]["normal"] for p, it in
                                                           zip(predictions, items) if str(it.get("marks", "")).lower()
                                                           == "true"])) if sub_items else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/bus_uclm")
    parser.add_argument("--backbone", default="UltraAD-Tiny-ViT")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--feature_layers", default="1,2,3,4")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default=None)
    parser.add_argument("--output", default="benchmarks/results/mark_removal")
    args = parser.parse_args(argv)
    start = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="ultraad_mark_removal_"))
    random = is_random_init(args.pretrained)
    backbone = ClipBackbone(args.backbone, None if random else args.pretrained,
                            tuple(int(x) for x in args.feature_layers.split(",")), allow_random_init=random,
                            init_seed=args.seed)
    store = engine.build_store(backbone, cache_dir=work / "cache", progress=False)
    split = make_fewshot_split(read_dataset(args.data_dir), k=args.shots, seed=args.seed)
    model = engine.build_model(backbone, seed=args.seed)
    fit = engine.fit(model, split.shots, split.validation, store, engine.TrainConfig(epochs=args.epochs, seed=args.seed),
                     progress=False)
    result = {"command": "python -m benchmarks.mark_removal " + " ".join(argv or []), "backbone": backbone.description,
              "random_weights": backbone.random_weights, "shots": args.shots, "seed": args.seed,
              "threshold": fit.threshold, "variants": {}}
    if backbone.random_weights:
        result["warning"] = RANDOM_WEIGHTS_WARNING
    for variant in ("original", "inpaint", "mask"):
        items, marks = processed_items(list(split.test), variant, work / variant)
        result["variants"][variant] = score(model, items, store, fit.threshold, marks)
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.output)
    atomic_write_json(out / "mark_removal.json", result, nan_as_null=True)
    atomic_write_text(out / "mark_removal.md", to_markdown(result))
    print(to_markdown(result))
    return result


def _f(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def to_markdown(result: dict) -> str:
    lines = ["# Mark removal before inference", ""]
    if result["random_weights"]:
        lines += [f"> **{RANDOM_WEIGHTS_WARNING}**", ""]
    b = result["backbone"]
    lines += [(f"`{result['command'].strip()}`: backbone {b['model_name']} ({b['weights_id']}), k = {result['shots']}, "
               f"seed {result['seed']}, {result['seconds']} s; patient-disjoint BUS-UCLM test images, only those on "
               "which the marks detector fires are changed"), "",
              "| test images | " + " | ".join(METRICS) + " | mean P(abnormal), marks subset | top-1 % on marks |",
              "|---|" + "---|" * (len(METRICS) + 2)]
    for variant, v in result["variants"].items():
        for part in ("all", "marks_subset"):
            n = v["n_images"] if part == "all" else v["n_marks_subset"]
            extra = [_f(v["mean_p_abnormal_marks_subset"]), _f(v["top1_on_marks"])] if part == "all" else ["", ""]
            lines.append(f"| {variant}, {part.replace('_', ' ')} ({n}) | " + " | ".join(_f(v[part][m]) for m in METRICS)
                         + " | " + " | ".join(extra) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
