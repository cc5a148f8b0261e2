"""Per-image features other than the shared cached taps, cached the same way: what a method computes from the image
tower beyond :meth:`ClipBackbone.encode_image` (WinCLIP's re-encoded windows, April-GAN's raw residual taps).

A :class:`DerivedStore` is a :class:`~monai_ultraad.features.FeatureStore` with its own ``compute`` and a cache key
that names what it computes, so its entries never mix with the shared taps; it reads the images through the shared
store's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from monai_ultraad.features import FeatureStore
from monai_ultraad.networks import ClipBackbone, VisualFeatures

#: (images (B, 3, S, S)) -> (B, ...) and (B, ...) tensors, packed as VisualFeatures(cls_token, patch_tokens).
Compute = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DerivedStore(FeatureStore):
    """A cache of ``compute(images)`` per image, next to (and keyed apart from) ``store``'s entries."""

    def __init__(self, store: FeatureStore, name: str, compute: Compute) -> None:
        cache_dir = None if store.folder is None else store.folder.parent
        super().__init__(store.backbone, store.preprocessing, f"{store.key['preprocessing']}+{name}",
                         cache_dir=cache_dir, batch_size=store.batch_size, device=store.device, progress=False)
        self._compute = compute

    @torch.no_grad()
    def compute(self, images: torch.Tensor) -> VisualFeatures:
        first, second = self._compute(images.to(self.device))
        return VisualFeatures(first.detach().half().cpu(), second.detach().half().cpu())


_STORES: dict[tuple[int, str], DerivedStore] = {}


def derived_store(store: FeatureStore, name: str, compute: Compute) -> DerivedStore:
    """One derived store per (shared store, name) in this process: its in-memory hashes are reused across cells."""
    key = (id(store), name)
    if key not in _STORES:
        _STORES[key] = DerivedStore(store, name, compute)
    return _STORES[key]


def raw_taps(backbone: ClipBackbone) -> Compute:
    """The residual stream after each tapped block, WITHOUT the final LayerNorm (what April-GAN's linear layers
    read), and the projected class token."""

    def compute(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = next(backbone.visual.parameters())
        out = backbone.visual.forward_intermediates(
            images.to(param.device, param.dtype), indices=[layer - 1 for layer in backbone.feature_layers],
            normalize_intermediates=False, output_fmt="NLC")
        return out["image_features"], torch.stack(out["image_intermediates"], dim=1)

    return compute
