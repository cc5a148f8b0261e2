"""UltraAD's standard evaluation: every image-, class- and pixel-level metric from one stream of predictions."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_ultraad.constants import CLASS_NAMES, NORMAL_INDEX
from monai_ultraad.metrics.base import ArrayLike, as_labels, as_numpy, as_probs, as_scores, map_and_mask
from monai_ultraad.metrics.image import (
    Accuracy,
    BalancedAccuracy,
    BinaryAUROC,
    ExpectedCalibrationError,
    MulticlassAUROC,
)
from monai_ultraad.metrics.pixel import DiceIoU, PixelAUROC


class UltraADEvaluator:
    """The standard UltraAD metric set, accumulated batch by batch.

    ``update(class_probs (B, C), scores (B,), targets (B,), maps, masks)`` where ``maps`` is a
    ``(B, H, W)`` / ``(B, 1, H, W)`` array or a list of per-image ``(H, W)`` maps in ``[0, 1]``
    (sizes may differ per image) and ``masks`` is ``None`` or a matching list whose entries may be
    ``None`` for images without a ground-truth mask. Pixel metrics use only images with a mask:
    give normal images an all-zero mask so their pixels count as background.

    ``compute()`` returns a dict with ``image_auroc`` (normal vs abnormal from the anomaly score),
    ``cls_auroc_macro`` (OvR over the classes present), ``benign_malignant_auroc`` (score
    ``P(malignant) / (P(benign) + P(malignant))`` on abnormal images), ``accuracy``,
    ``balanced_accuracy``, ``ece``, ``pixel_auroc``, ``dice``, ``iou`` (global, at
    ``threshold``), ``dice_per_image``, ``iou_per_image``, ``fp_pixel_rate_empty``,
    ``threshold``, ``n_images``, ``n_images_with_mask``, ``n_<class>`` per class, and ``notes``:
    a list of reasons for every metric that is ``nan``.
    """

    PIXEL_KEYS: tuple[str, ...] = (
        "pixel_auroc",
        "dice",
        "iou",
        "dice_per_image",
        "iou_per_image",
        "fp_pixel_rate_empty",
    )

    def __init__(
        self,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
        normal_index: int = NORMAL_INDEX,
        n_bins: int = 15,
    ) -> None:
        self.threshold = float(threshold)
        self.class_names = tuple(class_names)
        self.normal_index = int(normal_index)
        self.n_bins = int(n_bins)
        self.reset()

    def reset(self) -> None:
        self._image_auroc = BinaryAUROC()
        self._cls_auroc = MulticlassAUROC(num_classes=len(self.class_names))
        self._bm_auroc = BinaryAUROC()
        self._accuracy = Accuracy()
        self._balanced = BalancedAccuracy()
        self._ece = ExpectedCalibrationError(self.n_bins)
        self._pixel_auroc = PixelAUROC()
        self._dice = DiceIoU(self.threshold)
        self._targets: list[np.ndarray] = []
        self._n_with_mask = 0

    @staticmethod
    def _split_images(x: ArrayLike, batch: int, name: str) -> list[Any]:
        """A list of per-image items from a list/tuple or a batched array/tensor."""
        if isinstance(x, (list, tuple)):
            items = list(x)
        else:
            arr = as_numpy(x)
            if arr.ndim not in (3, 4):
                raise ValueError(f"{name} must be a list of (H, W) maps or a (B, [1,] H, W) array, got {arr.shape}")
            items = list(arr)
        if len(items) != batch:
            raise ValueError(f"{name} has {len(items)} images but the batch has {batch}")
        return items

    def update(
        self,
        class_probs: ArrayLike,
        scores: ArrayLike,
        targets: ArrayLike,
        maps: ArrayLike | Sequence[ArrayLike] | None = None,
        masks: ArrayLike | Sequence[ArrayLike | None] | None = None,
    ) -> None:
        probs = as_probs(class_probs, "class_probs")
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"class_probs has {probs.shape[1]} columns, expected {len(self.class_names)}")
        s = as_scores(scores, "scores")
        t = as_labels(targets, "targets", num_classes=len(self.class_names))
        if not (probs.shape[0] == s.shape[0] == t.shape[0]):
            raise ValueError(f"batch sizes differ: class_probs {probs.shape}, scores {s.shape}, targets {t.shape}")
        b = t.shape[0]
        map_list = self._split_images(maps, b, "maps") if maps is not None else None
        mask_list = self._split_images(masks, b, "masks") if masks is not None else None
        if mask_list is not None and map_list is None and any(m is not None for m in mask_list):
            raise ValueError("masks were given without maps")

        # Validate everything before updating anything, so a bad batch leaves no partial state.
        pairs = []
        if map_list is not None and mask_list is not None:
            pairs = [map_and_mask(m, g) for m, g in zip(map_list, mask_list) if g is not None]

        self._targets.append(t)
        self._image_auroc.update(s, (t != self.normal_index).astype(np.int64))
        self._cls_auroc.update(probs, t)
        self._accuracy.update(probs, t)
        self._balanced.update(probs, t)
        self._ece.update(probs, t)
        if "benign" in self.class_names and "malignant" in self.class_names:
            ib, im = self.class_names.index("benign"), self.class_names.index("malignant")
            abnormal = (t == ib) | (t == im)
            if abnormal.any():
                pb, pm = probs[abnormal, ib], probs[abnormal, im]
                den = pb + pm
                bm = np.where(den > 0, pm / np.where(den > 0, den, 1.0), 0.5)
                self._bm_auroc.update(bm, (t[abnormal] == im).astype(np.int64))
        for m, g in pairs:
            self._pixel_auroc.update(m, g)
            self._dice.update(m, g)
        self._n_with_mask += len(pairs)

    def compute(self) -> dict[str, Any]:
        notes: list[str] = []

        def run(name: str, fn: Any) -> Any:
            # Sub-metric warnings (why a value is nan) become notes instead of console noise.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = fn()
            notes.extend(f"{name}: {w.message}" for w in caught)
            return value

        targets = np.concatenate(self._targets) if self._targets else np.zeros(0, np.int64)
        out: dict[str, Any] = {
            "image_auroc": run("image_auroc", self._image_auroc.compute),
            "cls_auroc_macro": run("cls_auroc_macro", self._cls_auroc.compute),
        }
        if "benign" in self.class_names and "malignant" in self.class_names:
            if self._bm_auroc.targets.size == 0:
                out["benign_malignant_auroc"] = float("nan")
                notes.append("benign_malignant_auroc: no benign or malignant images")
            else:
                out["benign_malignant_auroc"] = run("benign_malignant_auroc", self._bm_auroc.compute)
        else:
            out["benign_malignant_auroc"] = float("nan")
            notes.append("benign_malignant_auroc: class_names lack 'benign' and/or 'malignant'")
        out["accuracy"] = run("accuracy", self._accuracy.compute)
        out["balanced_accuracy"] = run("balanced_accuracy", self._balanced.compute)
        out["ece"] = run("ece", self._ece.compute)
        if self._n_with_mask == 0:
            out["pixel_auroc"] = float("nan")
            notes.append(f"{', '.join(self.PIXEL_KEYS)}: no image had both a map and a mask")
        else:
            out["pixel_auroc"] = run("pixel_auroc", self._pixel_auroc.compute)
        seg = self._dice.compute()
        out.update(
            dice=seg["dice"],
            iou=seg["iou"],
            dice_per_image=seg["dice_per_image"],
            iou_per_image=seg["iou_per_image"],
            fp_pixel_rate_empty=seg["fp_pixel_rate_empty"],
            threshold=self.threshold,
        )
        if self._n_with_mask and seg["n_lesion_images"] == 0:
            notes.append("dice_per_image, iou_per_image: no image with a lesion in its mask")
        if self._n_with_mask and seg["n_empty_images"] == 0:
            notes.append("fp_pixel_rate_empty: no image with an empty mask")
        out["n_images"] = int(targets.size)
        out["n_images_with_mask"] = int(self._n_with_mask)
        counts = np.bincount(targets, minlength=len(self.class_names))
        for i, name in enumerate(self.class_names):
            out[f"n_{name}"] = int(counts[i])
        # Any nan not yet explained gets a generic note, so a nan is never silent.
        explained = {k.strip() for note in notes for k in note.split(":", 1)[0].split(",")}
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value) and key not in explained:
                notes.append(f"{key}: undefined for the data seen")
        out["notes"] = notes
        return out
