"""Train task: few-shot UltraAD from the labels saved in the datastore, through monai_ultraad.engine.fit.

Every ``final`` label is a training example; its image class comes from the label (see lib/datastore/labels.py).
``shots`` images per class (seeded, capped by the rarest class so the memory bank stays balanced) train the head;
the other labelled images are the validation set that picks the best epoch and the heatmap threshold (none: last
epoch, threshold 0.5, and the checkpoint says so). Images and masks are handed to the engine as .npy arrays in the
model folder, because the datastore holds NIfTI converted from DICOM that the engine's PIL loader does not read.
The checkpoint is monai_ultraad.checkpoint.save_checkpoint's (atomic, full provenance), so the CLI, the bundle and the deploy app read
it too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.configs.ultraad import ModelProvider
from lib.datastore.labels import label_class
from lib.imageio import read_label, read_picture
from monai_ultraad import engine
from monai_ultraad.checkpoint import save_checkpoint
from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.data import sample_k_shot
from monai_ultraad.errors import InputDataError, UltraADError
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json
from monai_ultraad.runtime import tune_cpu_allocator

logger = logging.getLogger(__name__)
STATS_NAME = "train_stats.json"


class UltraADTrain(TrainTask):
    """Few-shot training of the UltraAD head on the datastore's final labels."""

    def __init__(self, provider: ModelProvider) -> None:
        super().__init__("UltraAD few-shot training from the labels saved in the datastore")
        self.provider = provider

    def config(self) -> dict[str, Any]:
        # a list is a drop-down in MONAI Label's Slicer module; its first entry is the default
        return {"shots": 8, "epochs": engine.TrainConfig.epochs, "batch_size": 8, "lr": engine.TrainConfig.lr, "seed": 0, "precision": list(engine.PRECISIONS)}

    def stats(self) -> dict[str, Any]:
        path = self.provider.settings.model_dir / STATS_NAME
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def collect(self, datastore: Datastore, workdir: Path) -> tuple[list[dict], list[dict]]:
        """Training items from the final labels, and the labels that could not be used (with reasons)."""
        items, skipped = [], []
        (workdir / "images").mkdir(parents=True, exist_ok=True)
        (workdir / "masks").mkdir(exist_ok=True)
        for image_id in sorted(datastore.get_labeled_images(DefaultLabelTag.FINAL)):
            try:
                label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)
                info = datastore.get_label_info(label_id, DefaultLabelTag.FINAL) or {}
                picture = read_picture(datastore.get_image_uri(image_id))
                values = read_label(datastore.get_label_uri(label_id, DefaultLabelTag.FINAL), picture.rgb.shape[:2])
            except (InputDataError, OSError) as exc:
                skipped.append({"image": image_id, "reason": str(exc)})
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the PACS is gone: skip this one image, say why
                skipped.append({"image": image_id, "reason": getattr(exc, "detail", None) or repr(exc)})
                continue
            name, _ = label_class(values, info)
            key = hashlib.sha1(image_id.encode()).hexdigest()[:16]  # ids are UIDs or file stems: no path tricks
            image_npy, mask_npy = workdir / "images" / f"{key}.npy", workdir / "masks" / f"{key}.npy"
            for path, arr in ((image_npy, picture.rgb), (mask_npy, values > 0)):
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                atomic_write_bytes(path, buf.getvalue())
            items.append({"id": image_id, "image": str(image_npy), "mask": str(mask_npy),
                          "label": CLASS_NAMES.index(name), "patient": image_id})
        return items, skipped

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        settings = self.provider.settings
        params = {**self.config(), **{k: v for k, v in request.items() if k in self.config()}}
        shots_per_class, seed = int(params["shots"]), int(params["seed"])
        start = time.perf_counter()
        items, skipped = self.collect(datastore, settings.model_dir / "train_data")
        counts = Counter(CLASS_NAMES[it["label"]] for it in items)
        if len(counts) < 2 or "normal" not in counts:
            raise UltraADError(
                f"training needs labelled normal images and labelled lesions; the datastore has {dict(counts) or 'none'}"
                f"{' (skipped: ' + str(len(skipped)) + ')' if skipped else ''}"
            )
        k = min(shots_per_class, min(counts.values()))
        shots = sample_k_shot(items, k, seed)
        shot_ids = {it["id"] for it in shots}
        validation = [it for it in items if it["id"] not in shot_ids]

        tune_cpu_allocator()  # MONAI Label trains in a subprocess of its own: only that process is changed
        model = engine.build_model(self.provider.backbone, seed=seed)
        precision = params["precision"]  # the drop-down's list itself when the client left it unchanged
        precision = precision[0] if isinstance(precision, list) else str(precision)
        try:
            config = engine.TrainConfig(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]),
                                        lr=float(params["lr"]), seed=seed, precision=precision)
        except ValueError as exc:
            raise UltraADError(f"invalid training parameters: {exc}") from exc
        store = engine.build_store(self.provider.backbone, cache_dir=settings.model_dir / "features", progress=False)
        # What MONAI Label's Slicer module polls while the task runs (monitorTraining: epoch / total_epochs, no
        # total_time yet): the bar starts at the beginning instead of jumping to 100 %.
        atomic_write_json(settings.model_dir / STATS_NAME, {
            "epoch": 0, "total_epochs": config.epochs, "best_metric": self.stats().get("best_metric", 0.0),
            "status": "RUNNING",
        })
        fit_start = time.perf_counter()
        result = engine.fit(model, shots, validation, store, config, progress=False)
        fit_seconds = time.perf_counter() - fit_start
        split = {"shots": sorted(shot_ids), "validation": sorted(it["id"] for it in validation), "test": []}
        save_checkpoint(
            settings.checkpoint, model, threshold=result.threshold, train_config=config, split=split,
            fit_result=result,
            extra={"source": "monailabel_app", "datastore": datastore.name(), "class_counts": dict(counts),
                   "shots_per_class": k, "skipped": skipped},
        )
        scores = [float(r["val_score"]) for r in result.history if not math.isnan(float(r.get("val_score", math.nan)))]
        stats = {
            # the keys MONAI Label's Slicer module reads (plugins/slicer/MONAILabel/MONAILabel.py): the accuracy bar
            # shows best_metric (here the best validation selection score, mean of monai_ultraad.selection.SELECTION_METRICS; 0
            # without validation), the progress bar epoch / total_epochs, and total_time marks a finished run
            "best_metric": max(scores) if scores else 0.0,
            "epoch": len(result.history),
            "total_epochs": config.epochs,
            "total_time": round(time.perf_counter() - start, 3),
            "checkpoint": settings.checkpoint.name,
            "shots_per_class": k,
            "requested_shots": shots_per_class,
            "class_counts": dict(counts),
            "validation_images": len(validation),
            "skipped": skipped,
            "best_epoch": result.best_epoch,
            "threshold": result.threshold,
            "val_metrics": {k2: (None if math.isnan(v) else v) for k2, v in result.val_metrics.items() if isinstance(v, (int, float))},
            "notes": result.notes,
            "fit_seconds": round(fit_seconds, 3),
            "total_seconds": round(time.perf_counter() - start, 3),
            "random_weights": model.random_weights,
            "seed": seed,
        }
        if model.random_weights:
            stats["warning"] = RANDOM_WEIGHTS_WARNING
        atomic_write_json(settings.model_dir / STATS_NAME, stats)
        logger.info("UltraAD training done: %s", {k2: stats[k2] for k2 in ("shots_per_class", "best_epoch", "fit_seconds")})
        return stats
