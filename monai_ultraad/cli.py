"""``ultraad`` command line: ``fewshot`` (train + test over seeds), ``evaluate`` (a checkpoint), ``predict`` (images).

Each command is a thin face over :mod:`monai_ultraad.engine`. Examples::

    ultraad fewshot --data_dir ../shared/data/bus_uclm --shots 4 --seeds 0,1,2 --pretrained /models/ViT-L-14-336.pt
    ultraad evaluate --checkpoint runs/ultraad/seed0/model.pt --data_dir ../shared/data/bus_bra
    ultraad predict --checkpoint runs/ultraad/seed0/model.pt --images scan1.png,scan2.png --output_dir out/
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light modules at import time: ``ultraad --help`` must not pay for torch's, open_clip's or MONAI's import (and
# ``import monai`` also imports the deploy SDK and holoscan, which warn about the stack size). Each command imports
# what it needs when it runs.
from monai_ultraad.constants import (
    DEFAULT_BACKBONE,
    DEFAULT_FEATURE_LAYERS,
    DEFAULT_PRETRAINED,
    IMAGE_SUFFIXES,
    RANDOM_WEIGHTS_WARNING,
)
from monai_ultraad.errors import UltraADError

if TYPE_CHECKING:
    from monai_ultraad.networks import ClipBackbone

logger = logging.getLogger("monai_ultraad")

#: Metrics shown in the console table and summary, in this order.
REPORT_METRICS = (
    "image_auroc",
    "cls_auroc_macro",
    "benign_malignant_auroc",
    "accuracy",
    "balanced_accuracy",
    "pixel_auroc",
    "dice",
    "iou",
    "ece",
)
_DEFAULT_LAYERS_TEXT = ",".join(map(str, DEFAULT_FEATURE_LAYERS))


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _layers(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "auto":
        return None
    return tuple(int(v) for v in _as_list(value))


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _banner(random_weights: bool) -> None:
    if random_weights:
        print(f"\n*** {RANDOM_WEIGHTS_WARNING} ***\n", file=sys.stderr)


class UltraADCLI:
    """UltraAD few-shot lesion heatmaps and normal/benign/malignant classification for breast ultrasound."""

    def fewshot(
        self,
        data_dir: str,
        fmt: str = "auto",
        shots: int = 4,
        seeds: Any = "0,1,2",
        backbone: str = DEFAULT_BACKBONE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        allow_random_init: bool = False,
        feature_layers: Any = _DEFAULT_LAYERS_TEXT,
        epochs: int = 20,
        batch_size: int = 8,
        lr: float = 5e-3,
        precision: str = "fp32",
        split_seed: int = 0,
        test_fraction: float = 0.3,
        max_val_per_class: int | None = 20,
        max_test: int | None = None,
        output_dir: str = "runs/ultraad",
        cache_dir: str | None = None,
        device: str = "auto",
        progress: bool = True,
        model: str = "ultraad",
        zero_shot: bool = False,
        views: int | None = None,
    ) -> dict:
        """Few-shot train on ``shots`` images per class and test on patient-disjoint images, once per seed.

        Writes, under ``output_dir``: ``seed<N>/model.pt`` (checkpoint with provenance), ``seed<N>/metrics.json``,
        ``seed<N>/predictions.json``, ``seed<N>/roc.png``, and ``summary.json`` / ``summary.md`` (mean ± std over
        seeds). The best epoch and the heatmap threshold come from validation images of the training pool only.

        ``--model mvfa`` trains MVFA instead (its own defaults unless given: 50 epochs, lr 1e-3, 11 views, batch 1;
        ``--zero_shot``: no memory, no views, lr 1e-4; then ``evaluate`` it on an unseen dataset).
        """
        import numpy as np

        from monai_ultraad import engine
        from monai_ultraad.data import make_fewshot_split, read_dataset
        from monai_ultraad.io_utils import atomic_write_json, atomic_write_text
        from monai_ultraad.metrics import summarize_over_seeds
        from monai_ultraad.networks import ClipBackbone
        from monai_ultraad.runtime import tune_cpu_allocator
        from monai_ultraad.visualize import plot_prediction_rocs

        seeds_list = [int(s) for s in _as_list(seeds)]
        items = read_dataset(data_dir, fmt)
        bb = ClipBackbone(backbone, pretrained, _layers(feature_layers), allow_random_init=allow_random_init)
        _banner(bb.random_weights)
        if model == "mvfa":
            return _mvfa_fewshot(locals(), items, bb, seeds_list)
        if model != "ultraad":
            raise UltraADError(f"--model must be ultraad or mvfa, not {model!r}")
        tune_cpu_allocator()
        store = engine.build_store(bb, cache_dir=cache_dir if cache_dir else True, device=_device(device), progress=progress)
        out = Path(output_dir)
        per_seed = []
        for seed in seeds_list:
            split = make_fewshot_split(
                items, k=shots, seed=seed, split_seed=split_seed, test_fraction=test_fraction,
                max_val_per_class=max_val_per_class,
            )
            test_items = split.test if max_test is None else _subsample(split.test, max_test, split_seed)
            model = engine.build_model(bb, seed=seed)
            cfg = engine.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, precision=precision)
            result = engine.fit(model, split.shots, split.validation, store, cfg, progress=progress)
            metrics, predictions = engine.evaluate(model, test_items, store, result.threshold, progress=progress)
            metrics.update(
                seed=seed, best_epoch=result.best_epoch, epoch_seconds_mean=float(np.mean(result.epoch_seconds)),
                feature_seconds=result.feature_seconds, n_shots=len(split.shots), n_validation=len(split.validation),
            )
            seed_dir = out / f"seed{seed}"
            engine.save_checkpoint(
                seed_dir / "model.pt", model, threshold=result.threshold, train_config=cfg, split=split.to_dict(),
                fit_result=result, extra={"dataset": str(Path(data_dir).name), "format": fmt},
            )
            atomic_write_json(seed_dir / "metrics.json", {"test": metrics, "validation": result.val_metrics,
                                                          "history": result.history, "notes": result.notes},
                              nan_as_null=True)
            atomic_write_json(seed_dir / "predictions.json", predictions)
            plot_prediction_rocs(seed_dir / "roc.png", predictions, model.class_names, f"UltraAD k={shots} seed={seed}", bb.random_weights)
            per_seed.append(metrics)
            print(f"seed {seed}: " + ", ".join(f"{k}={metrics.get(k, float('nan')):.3f}" for k in REPORT_METRICS))
        summary = summarize_over_seeds([{k: m.get(k) for k in (*REPORT_METRICS, "epoch_seconds_mean")} for m in per_seed])
        record = {
            "dataset": str(data_dir), "shots": shots, "seeds": seeds_list, "backbone": bb.description,
            "random_weights": bb.random_weights, "summary": summary,
        }
        if bb.random_weights:
            record["warning"] = RANDOM_WEIGHTS_WARNING
        atomic_write_json(out / "summary.json", record, nan_as_null=True)
        table = _markdown_table(summary, shots, len(seeds_list), bb)
        atomic_write_text(out / "summary.md", table)
        print(table)
        return record

    def evaluate(
        self,
        checkpoint: str,
        data_dir: str,
        fmt: str = "auto",
        split: str = "auto",
        pretrained: str | None = None,
        allow_random_init: bool = False,
        threshold: float | None = None,
        output_dir: str | None = None,
        cache_dir: str | None = None,
        device: str = "auto",
        progress: bool = True,
    ) -> dict:
        """Evaluate a checkpoint on a dataset.

        ``split``: ``test`` uses the checkpoint's recorded test images, ``all`` every image; ``auto`` uses the test
        images when the dataset contains the checkpoint's shots (same dataset), else every image (unseen dataset).
        The threshold is the checkpoint's validation threshold unless given.
        """
        from monai_ultraad import engine, mvfa_engine
        from monai_ultraad.data import read_dataset
        from monai_ultraad.io_utils import atomic_write_json
        from monai_ultraad.visualize import plot_prediction_rocs

        if mvfa_engine.is_mvfa_checkpoint(checkpoint):
            return _mvfa_evaluate(locals())
        model, payload = engine.load_checkpoint(
            checkpoint, pretrained=pretrained, allow_random_init=allow_random_init, device=_device(device)
        )
        _banner(model.random_weights)
        items = read_dataset(data_dir, fmt)
        items = engine.recorded_test_items(payload, items, split)
        store = engine.build_store(model.backbone, cache_dir=cache_dir if cache_dir else True,
                                   device=_device(device), progress=progress)
        thr = float(payload["threshold"] if threshold is None else threshold)
        metrics, predictions = engine.evaluate(model, items, store, thr, progress=progress)
        print(", ".join(f"{k}={metrics.get(k, float('nan')):.3f}" for k in REPORT_METRICS))
        if output_dir:
            out = Path(output_dir)
            atomic_write_json(out / "metrics.json", metrics, nan_as_null=True)
            atomic_write_json(out / "predictions.json", predictions)
            plot_prediction_rocs(out / "roc.png", predictions, model.class_names, f"UltraAD on {Path(data_dir).name}",
                     model.random_weights)
        return metrics

    def predict(
        self,
        checkpoint: str,
        images: Any,
        output_dir: str = "predictions",
        pretrained: str | None = None,
        allow_random_init: bool = False,
        device: str = "auto",
        progress: bool = True,
        refuse_flagged: bool = False,
    ) -> list[dict]:
        """Heatmap overlay PNG and class-probability JSON for each image (files, comma list, or a folder).

        Every JSON states the input gate's flags (``input_quality``: colour Doppler / elastography overlay, calliper
        or annotation marks). ``--refuse_flagged``: a flagged image is not analysed; its JSON says why.
        """
        from monai_ultraad import mvfa_engine
        from monai_ultraad.inference import Predictor
        from monai_ultraad.prediction_files import predict_files

        paths: list[Path] = []
        for entry in _as_list(images):
            p = Path(entry)
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        if mvfa_engine.is_mvfa_checkpoint(checkpoint):
            model, payload = mvfa_engine.load_checkpoint(checkpoint, pretrained=pretrained,
                                                         allow_random_init=allow_random_init, device=_device(device))
            _banner(model.random_weights)
            if not paths:
                raise UltraADError("no images given to predict")
            return mvfa_engine.predict_images(model, paths, Path(output_dir), float(payload["threshold"]), progress)
        predictor = Predictor.from_checkpoint(checkpoint, pretrained=pretrained, allow_random_init=allow_random_init,
                                              device=_device(device))
        _banner(predictor.random_weights)
        if not paths:
            raise UltraADError("no images given to predict")
        return predict_files(predictor, paths, output_dir, refuse_flagged=refuse_flagged, progress=progress)


#: ``fewshot``'s defaults: an ``--epochs`` / ``--lr`` left at UltraAD's default gives MVFA its own (50, 1e-3).
_FEWSHOT_DEFAULTS = {k: p.default for k, p in inspect.signature(UltraADCLI.fewshot).parameters.items()}


def _mvfa_fewshot(args: dict, items: list[dict], bb: ClipBackbone, seeds: list[int]) -> dict:
    """``fewshot --model mvfa``: MVFA's own schedule, except what the command line sets explicitly."""
    from monai_ultraad import mvfa_engine
    from monai_ultraad.data import make_fewshot_split

    given = {k: args[k] for k in ("epochs", "lr") if args[k] != _FEWSHOT_DEFAULTS[k]}
    if args["views"] is not None:
        given["views"] = int(args["views"])
    make = mvfa_engine.MVFAConfig.zero_shot if args["zero_shot"] else mvfa_engine.MVFAConfig
    configs = [make(seed=s, **given) for s in seeds]
    splits = [make_fewshot_split(items, k=args["shots"], seed=s, split_seed=args["split_seed"],
                                 test_fraction=args["test_fraction"], max_val_per_class=args["max_val_per_class"])
              for s in seeds]
    bb.to(_device(args["device"]))
    return mvfa_engine.fewshot_cli(args["data_dir"], items, splits, bb, configs, Path(args["output_dir"]), args["fmt"],
                                   args["progress"])


def _mvfa_evaluate(args: dict) -> dict:
    from monai_ultraad import engine, mvfa_engine
    from monai_ultraad.data import read_dataset
    from monai_ultraad.io_utils import atomic_write_json

    model, payload = mvfa_engine.load_checkpoint(args["checkpoint"], pretrained=args["pretrained"],
                                                 allow_random_init=args["allow_random_init"],
                                                 device=_device(args["device"]))
    _banner(model.random_weights)
    items = engine.recorded_test_items(payload, read_dataset(args["data_dir"], args["fmt"]), args["split"])
    thr = float(payload["threshold"] if args["threshold"] is None else args["threshold"])
    metrics, predictions = mvfa_engine.evaluate(model, items, thr, progress=args["progress"])
    print(", ".join(f"{k}={metrics.get(k) if metrics.get(k) is None else round(metrics[k], 3)}"
                    for k in ("image_auroc", "pixel_auroc", "dice", "iou")))
    if args["output_dir"]:
        out = Path(args["output_dir"])
        atomic_write_json(out / "metrics.json", metrics, nan_as_null=True)
        atomic_write_json(out / "predictions.json", predictions)
    return metrics


def _subsample(items: list[dict], n: int, seed: int) -> list[dict]:
    import numpy as np

    if n >= len(items):
        return items
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def _markdown_table(summary: dict, shots: int, n_seeds: int, bb: ClipBackbone) -> str:
    from monai_ultraad.metrics import format_mean_std

    lines = [f"UltraAD, k={shots} shots per class, {n_seeds} seed(s), backbone {bb.model_name} ({bb.weights_id})", ""]
    if bb.random_weights:
        lines += [f"**{RANDOM_WEIGHTS_WARNING}**", ""]
    lines += ["| metric | mean ± std |", "|---|---|"]
    for key in (*REPORT_METRICS, "epoch_seconds_mean"):
        if key in summary:
            lines.append(f"| {key} | {format_mean_std(summary[key])} |")
    return "\n".join(lines) + "\n"


#: Help text of every flag (the same flag means the same thing in every command).
FLAG_HELP: dict[str, str] = {
    "data_dir": "dataset folder or file: BUS-UCLM, BUS-BRA or BUSI layout, a labels CSV or a MONAI datalist JSON",
    "fmt": "dataset layout: auto (detect), labels_csv, busi, bus_uclm, bus_bra or datalist",
    "shots": "training images per class (normal, benign, malignant)",
    "seeds": "comma-separated seeds; one few-shot split, model and test run per seed",
    "backbone": "open_clip model name of the CLIP backbone (UltraAD-Tiny-ViT: tiny random one for tests)",
    "pretrained": "pretrained weights: an open_clip tag, a weight file, or random (needs --allow_random_init)",
    "allow_random_init": "allow a randomly initialised backbone; every output is then marked RANDOM WEIGHTS",
    "feature_layers": "comma-separated 1-based backbone blocks whose patch tokens are adapted, or auto",
    "epochs": "training epochs (the best one on validation images is kept)",
    "batch_size": "training batch size",
    "lr": "learning rate (AdamW)",
    "precision": "training precision: fp32 or bf16 (bf16 is slow on CPUs without AVX512-BF16)",
    "split_seed": "seed of the patient-disjoint train / test split",
    "test_fraction": "fraction of patients held out for testing",
    "max_val_per_class": "validation images per class taken from the training pool (None: all)",
    "max_test": "test on at most this many test images, drawn with --split_seed (None: all)",
    "output_dir": "folder the outputs are written to",
    "cache_dir": "folder of the cached backbone features (default: a cache beside the dataset)",
    "device": "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...",
    "progress": "show progress bars (True / False)",
    "model": "method: ultraad, or mvfa (the MVFA baseline)",
    "zero_shot": "mvfa only: zero-shot schedule (no memory, no views, lr 1e-4)",
    "views": "mvfa only: augmented views per training image (default: MVFA's 11)",
    "checkpoint": "model.pt written by fewshot (or the bundle / MONAI Label trainer)",
    "split": "images to evaluate: test (the checkpoint's recorded test images), all, or auto",
    "threshold": "heatmap threshold (default: the checkpoint's, chosen on validation images)",
    "images": "image files, a comma-separated list of them, or a folder",
    "refuse_flagged": "do not analyse images the input gate flags (Doppler, elastography, marks); say why instead",
}

_TYPES = {"int": int, "float": float}


def _none_or(kind: type):
    """``kind``, or None for the word None (as the flags took it before)."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")


def _add_flags(parser: argparse.ArgumentParser, method: Any) -> None:
    """One flag per parameter of ``method``, typed from its annotation, with :data:`FLAG_HELP` as its help."""
    for name, param in inspect.signature(method).parameters.items():
        if name == "self":
            continue
        annotation, default = str(param.annotation), param.default
        required = default is inspect.Parameter.empty
        kwargs: dict[str, Any] = {"dest": name, "help": FLAG_HELP[name]}
        if annotation == "bool":
            # ``--flag`` alone means True; ``--flag False`` is accepted too.
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        else:
            base = annotation.replace(" | None", "")
            kind = _TYPES.get(base, str)
            kwargs["type"] = _none_or(kind) if "None" in annotation or base == "Any" else kind
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(f"--{name}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``ultraad`` argument parser: one sub-command per public method of :class:`UltraADCLI`."""
    parser = argparse.ArgumentParser(
        prog="ultraad", description=UltraADCLI.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'ultraad COMMAND --help' for the flags of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        method = getattr(UltraADCLI, name)
        doc = inspect.getdoc(method) or ""
        sub = commands.add_parser(name, help=doc.split("\n")[0], description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_flags(sub, method)
    return parser


#: The sub-commands, in the order ``ultraad --help`` lists them.
COMMANDS = ("fewshot", "evaluate", "predict")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ultraad`` console script; errors become one clear line and exit code 2."""
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # The commands print their own tables; their return values are for callers in Python.
        getattr(UltraADCLI(), command)(**args)
    except UltraADError as exc:
        print(f"ultraad: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
