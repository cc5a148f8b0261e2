"""Frozen-backbone feature cache: the image tower runs once per (backbone weights, preprocessing, image content).

Few-shot training runs many epochs and seeds over the same few images, and evaluation scores the same test set for
every seed. Since the backbone is frozen, its outputs are a pure function of (architecture, weights, tapped layers,
preprocessing, image bytes); the cache keys on exactly that, so a hit can never be stale. Entries are stored as
float16 tensors (halving disk; the head runs in float32) with ``torch.save`` and read back with
``torch.load(weights_only=True)``. Writes are atomic; an unreadable entry is recomputed, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from monai_ultraad.data.transforms import apply_pipeline
from monai_ultraad.errors import InputDataError
from monai_ultraad.io_utils import atomic_write_bytes
from monai_ultraad.networks.backbone import ClipBackbone, VisualFeatures

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as exc:
        raise InputDataError(f"image file not found: {path}") from exc


def default_cache_dir() -> Path:
    """``$ULTRAAD_CACHE_DIR`` or ``~/.cache/monai_ultraad/features``."""
    env = os.environ.get("ULTRAAD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "monai_ultraad" / "features"


class FeatureStore:
    """Backbone features for dataset items, from the cache or computed (and cached) in batches.

    Args:
        backbone: the frozen backbone.
        preprocessing: callable mapping an item dict to a dict with ``"image"`` (3, S, S) normalised tensor.
        signature: string that identifies ``preprocessing`` (see ``monai_ultraad.data.transform_signature``).
        cache_dir: root folder of the cache; None keeps features in memory only (this process).
        batch_size: backbone batch size for cache misses.
        device: where the backbone runs.
        progress: show a progress bar while computing features.
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        preprocessing: Callable[[dict], dict],
        signature: str,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        self.key = {"format": CACHE_FORMAT_VERSION, "backbone": backbone.feature_key, "preprocessing": signature}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.folder: Path | None = None
        if cache_dir is not None:
            self.folder = Path(cache_dir) / digest
            self.folder.mkdir(parents=True, exist_ok=True)
            meta = self.folder / "key.json"
            if not meta.exists():
                meta.write_text(json.dumps(self.key, indent=2, sort_keys=True))
        self._memory: dict[str, VisualFeatures] = {}
        self._hash_of_path: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ keys and entries
    def _image_hash(self, item: dict) -> str:
        path = str(item["image"])
        if path not in self._hash_of_path:
            self._hash_of_path[path] = file_sha256(path)
        return self._hash_of_path[path]

    def _entry_path(self, digest: str) -> Path | None:
        return None if self.folder is None else self.folder / digest[:2] / f"{digest}.pt"

    def _read(self, digest: str) -> VisualFeatures | None:
        if digest in self._memory:
            return self._memory[digest]
        path = self._entry_path(digest)
        if path is None or not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            feats = VisualFeatures(data["cls_token"], data["patch_tokens"])
        except Exception as exc:  # truncated or foreign file: recompute rather than fail
            logger.warning("feature cache entry %s is unreadable (%s); recomputing", path.name, exc)
            return None
        return feats

    def _write(self, digest: str, feats: VisualFeatures) -> None:
        path = self._entry_path(digest)
        if path is None:
            self._memory[digest] = feats
            return
        buffer = io.BytesIO()
        torch.save({"cls_token": feats.cls_token, "patch_tokens": feats.patch_tokens}, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    # ------------------------------------------------------------------ public API
    def compute(self, images: torch.Tensor) -> VisualFeatures:
        """Run the backbone on a (B, 3, S, S) batch and return float16 CPU features."""
        feats = self.backbone.encode_image(images.to(self.device))
        return VisualFeatures(feats.cls_token.detach().half().cpu(), feats.patch_tokens.detach().half().cpu())

    def get(self, items: Sequence[dict], desc: str = "backbone features") -> VisualFeatures:
        """Features of all ``items`` stacked in order (only cache misses run the backbone)."""
        parts = [feats for _, feats in self.iter_batches(items, batch_size=max(len(items), 1), desc=desc)]
        if not parts:
            raise InputDataError("no items to compute features for")
        return parts[0]

    def iter_batches(
        self, items: Sequence[dict], batch_size: int | None = None, desc: str = "backbone features"
    ) -> Iterator[tuple[list[dict], VisualFeatures]]:
        """Yield (items, stacked features) in batches of ``batch_size``; bounded memory for large test sets."""
        batch_size = batch_size or self.batch_size
        for start in range(0, len(items), batch_size):
            chunk = list(items[start : start + batch_size])
            feats = self._features_for(chunk, desc)
            yield chunk, feats

    def _features_for(self, items: list[dict], desc: str) -> VisualFeatures:
        digests = [self._image_hash(it) for it in items]
        found: dict[str, VisualFeatures] = {}
        for d in set(digests):
            feats = self._read(d)
            if feats is not None:
                found[d] = feats
        missing = [i for i, d in enumerate(digests) if d not in found]
        self.hits += len(items) - len(missing)
        self.misses += len(missing)
        if missing:
            bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not self.progress, leave=False)
            for start in range(0, len(missing), self.batch_size):
                idx = missing[start : start + self.batch_size]
                todo = [i for i in idx if digests[i] not in found]  # duplicates inside a batch
                if todo:
                    images = torch.stack([torch.as_tensor(self._prepare(items[i])) for i in todo])
                    feats = self.compute(images)
                    for j, i in enumerate(todo):
                        single = VisualFeatures(feats.cls_token[j].clone(), feats.patch_tokens[j].clone())
                        found[digests[i]] = single
                        self._write(digests[i], single)
                bar.update(len(idx))
            bar.close()
        return VisualFeatures(
            torch.stack([found[d].cls_token for d in digests]),
            torch.stack([found[d].patch_tokens for d in digests]),
        )

    def _prepare(self, item: dict[str, Any]) -> torch.Tensor:
        data = apply_pipeline(self.preprocessing, item)
        image = data["image"]
        return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
