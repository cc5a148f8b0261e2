"""Datasets of cached backbone features for MONAI/ignite engines (training shots, validation/test images)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from monai_ultraad.engine import EvalSample, load_eval_samples, training_masks
from monai_ultraad.errors import InputDataError
from monai_ultraad.features import FeatureStore
from monai_ultraad.networks.backbone import VisualFeatures


class ShotFeatureDataset(Dataset):
    """Few-shot training images as cached features + masks at the model resolution + labels + memory slots.

    The backbone runs once, here (or not at all, when the feature cache already holds the images). Item ``i`` is the
    ``i``-th entry of the memory bank, which :meth:`memory` returns for ``UltraAD.setup_memory``.

    Args:
        data: item dicts from :mod:`monai_ultraad.data` readers (typically ``FewShotSplit.shots``).
        store: the feature store of the model's backbone.
    """

    def __init__(self, data: Sequence[dict], store: FeatureStore) -> None:
        self.data = list(data)
        if not self.data:
            raise InputDataError("no training shots given")
        backbone = store.backbone
        self.features = store.get(self.data, desc="features (shots)")
        self.masks = training_masks(self.data, backbone.image_size, backbone.mean, backbone.std)
        self.labels = torch.tensor([int(it["label"]) for it in self.data])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "cls_token": self.features.cls_token[index],
            "patch_tokens": self.features.patch_tokens[index],
            "mask": self.masks[index],
            "label": self.labels[index],
            "slot": torch.tensor(index),
        }

    def memory(self) -> tuple[VisualFeatures, torch.Tensor]:
        """(features, labels) of all shots, for ``UltraAD.setup_memory``."""
        return self.features, self.labels


class EvalFeatureDataset(Dataset):
    """Validation / test images as cached features + ground truth at the original image resolution.

    Features are fetched per item from the store (from its cache after the first run), so the memory held does not
    grow with the test set.
    """

    def __init__(self, data: Sequence[dict], store: FeatureStore, precompute: bool = True) -> None:
        self.data = list(data)
        self.store = store
        if precompute:
            # Fill the cache in backbone-sized batches with one progress bar, instead of one image per __getitem__.
            for _ in store.iter_batches(self.data, desc="features (evaluation)"):
                pass

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        feats = self.store.get([item], desc="features")
        return {"cls_token": feats.cls_token[0], "patch_tokens": feats.patch_tokens[0],
                "sample": load_eval_samples([item])[0]}


def collate_eval(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack features; keep the per-image ground truth (sizes differ) as a list of :class:`EvalSample`."""
    return {
        "cls_token": torch.stack([b["cls_token"] for b in batch]),
        "patch_tokens": torch.stack([b["patch_tokens"] for b in batch]),
        "samples": [b["sample"] for b in batch],
    }


__all__ = ["EvalFeatureDataset", "EvalSample", "ShotFeatureDataset", "collate_eval"]
