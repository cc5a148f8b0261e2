"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023): windows of the patch grid re-encoded through the image tower,
window scores aggregated harmonically onto the patches.

For each scale s (2 and 3 patches: WinCLIP's small and mid scales) every s x s window of patch embeddings, with the
class embedding, goes through the tower again on its own; the window's class output is its embedding.

* **WinCLIP** (zero-shot): each window's P(abnormal) against the normal/abnormal prompt ensembles (CLIP's
  temperature 0.07); a patch's score per scale is the harmonic mean over the windows that cover it; the map is the
  harmonic mean over the scales, the whole image's score counted as one more scale.
* **WinCLIP+** (few-shot): each window, and each full-scale patch token, scored by its minimum cosine distance
  (halved) to the same scale's embeddings of the normal shots; aggregated harmonically per scale, averaged over
  scales; map = mean of the zero-shot and the few-shot maps, image score = mean of the zero-shot image score and the
  few-shot map's maximum.

The window embeddings cost one short forward pass per window and image: they are computed once per image and cached
(:mod:`benchmarks.methods.derived`) for every cell. Parity with anomalib's implementation: ``benchmarks/winclip_parity.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import (
    ABNORMAL_STATES,
    LOGIT_SCALE,
    NORMAL_STATES,
    OBJECT,
    TEMPLATES,
    MapMaker,
    class_text,
    normalised_cls,
)
from benchmarks.methods.derived import derived_store
from monai_ultraad.networks import ClipBackbone

#: WinCLIP's small and mid window sizes in patches (the large scale is the whole image).
SCALES = (2, 3)
#: CLIP's softmax temperature, as WinCLIP scores windows and the image.
TEMPERATURE = 0.07


def window_indices(grid: int, scale: int) -> torch.Tensor:
    """(n_windows, scale * scale) raster indices of the patches of every scale x scale window (stride 1), windows in
    raster order of their top-left patch."""
    if scale > grid:
        raise ValueError(f"window of {scale} patches does not fit a {grid} x {grid} grid")
    patches = torch.arange(grid * grid, dtype=torch.float32).view(1, 1, grid, grid)
    return F.unfold(patches, kernel_size=scale).long()[0].T


def harmonic_aggregation(window_scores: torch.Tensor, windows: torch.Tensor, n_patches: int) -> torch.Tensor:
    """(B, W) window scores -> (B, n_patches): per patch, the harmonic mean of the windows covering it (0 where one
    of them scores 0)."""
    cover = torch.zeros(windows.shape[0], n_patches, dtype=window_scores.dtype, device=window_scores.device)
    cover.scatter_(1, windows.to(window_scores.device), 1.0)  # (W, N)
    zero = window_scores == 0  # 1 / 0 would meet the zeros of `cover` in the product (inf * 0 = nan)
    inverse = (1.0 / torch.where(zero, torch.ones_like(window_scores), window_scores)) @ cover  # (B, N)
    mean = cover.sum(dim=0) / inverse
    return torch.where((zero.to(cover.dtype) @ cover) > 0, torch.zeros_like(mean), mean)


def text_embeddings(backbone: ClipBackbone, normal: Sequence[str], abnormal: Sequence[str]) -> torch.Tensor:
    """(2, D) [normal, abnormal]: the mean of each ensemble's (unnormalised) text embeddings, as WinCLIP averages."""
    return torch.stack([backbone.text.encode_texts(list(texts)).float().mean(dim=0) for texts in (normal, abnormal)])


def default_prompts(obj: str = OBJECT) -> tuple[list[str], list[str]]:
    """The benchmark's compositional ensemble (states x templates, shared by every prompt baseline)."""
    return ([t.format(s.format(obj)) for s in NORMAL_STATES for t in TEMPLATES],
            [t.format(s.format(obj)) for s in ABNORMAL_STATES for t in TEMPLATES])


@torch.no_grad()
def encode_windows(backbone: ClipBackbone, images: torch.Tensor, scales: Sequence[int] = SCALES,
                   chunk: int = 1024) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Image embedding (B, D), window embeddings per scale [(B, W_s, D)], last-block patch tokens (B, N, width).

    The windows start from the embedded patches (after the positional embedding, before the tower's first
    LayerNorm), as the full image does; each window with the class embedding is one short sequence.
    """
    visual = backbone.visual
    param = next(visual.parameters())
    images = images.to(param.device, param.dtype)
    captured: dict[str, torch.Tensor] = {}
    hook = visual.ln_pre.register_forward_pre_hook(lambda _m, args: captured.__setitem__("embedded", args[0]))
    try:
        out = visual.forward_intermediates(images, indices=[len(visual.transformer.resblocks) - 1],
                                           normalize_intermediates=True, output_fmt="NLC")
    finally:
        hook.remove()
    embedded = captured["embedded"]  # (B, 1 + N, width)
    batch = embedded.shape[0]
    windows_out = []
    for scale in scales:
        windows = window_indices(backbone.grid_size, scale).to(embedded.device)
        seq = torch.cat([torch.zeros(len(windows), 1, dtype=torch.long, device=embedded.device), windows + 1], 1)
        tokens = embedded[:, seq].flatten(0, 1)  # (B * W, 1 + s * s, width)
        pooled = []
        for start in range(0, tokens.shape[0], chunk):
            x = visual.ln_pre(tokens[start:start + chunk])
            if not getattr(visual.transformer, "batch_first", True):
                x = visual.transformer(x.transpose(0, 1)).transpose(0, 1)
            else:
                x = visual.transformer(x)
            pooled.append(visual.ln_post(x[:, 0]) @ visual.proj)
        windows_out.append(torch.cat(pooled).view(batch, len(windows), -1))
    return out["image_features"], windows_out, out["image_intermediates"][0]


def class_scores(embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """P(abnormal) of (..., D) embeddings against the (2, D) text at WinCLIP's temperature."""
    cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    return (cos / TEMPERATURE).softmax(dim=-1)[..., 1]


def association(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, N, D) vs (M, D): half the minimum cosine distance of every embedding to the reference: (B, N)."""
    cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(reference.float(), dim=-1).T
    # 1 - cos >= 0; rounding can make it -1e-8, whose reciprocal would swing the harmonic means
    return (1.0 - cos).clamp_min(0.0).amin(dim=-1) / 2.0


def zero_shot_map(image_score: torch.Tensor, windows: Sequence[torch.Tensor], text: torch.Tensor,
                  grid: int, scales: Sequence[int] = SCALES) -> torch.Tensor:
    """(B, N) WinCLIP map: harmonic mean over [the image score, each scale's harmonically aggregated window scores]."""
    n = grid * grid
    per_scale = [image_score.float()[:, None].expand(-1, n)]
    per_scale += [harmonic_aggregation(class_scores(w, text), window_indices(grid, s), n)
                  for w, s in zip(windows, scales)]
    return len(per_scale) / (1.0 / torch.stack(per_scale)).sum(dim=0)


def few_shot_map(patches: torch.Tensor, windows: Sequence[torch.Tensor], memory: Sequence[torch.Tensor],
                 grid: int, scales: Sequence[int] = SCALES) -> torch.Tensor:
    """(B, N) WinCLIP+ visual map: mean over [full-scale patches, each scale's aggregated windows] of the
    association to the normal reference (``memory`` = [patches (M, width), windows per scale (M_s, D)])."""
    n = grid * grid
    per_scale = [association(patches, memory[0])]
    per_scale += [harmonic_aggregation(association(w, ref), window_indices(grid, s), n)
                  for w, ref, s in zip(windows, memory[1:], scales)]
    return torch.stack(per_scale).mean(dim=0)


def winclip_scores(image_emb: torch.Tensor, windows: Sequence[torch.Tensor], patches: torch.Tensor,
                   text: torch.Tensor, grid: int, memory: Sequence[torch.Tensor] | None = None,
                   scales: Sequence[int] = SCALES) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (B,) and patch-grid maps (B, N) of WinCLIP (``memory`` None) or WinCLIP+."""
    image_score = class_scores(image_emb, text)
    amap = zero_shot_map(image_score, windows, text, grid, scales)
    if memory is not None:
        visual = few_shot_map(patches, windows, memory, grid, scales)
        amap = (amap + visual) / 2.0
        image_score = (image_score + visual.amax(dim=-1)) / 2.0
    return image_score, amap


def _pack(backbone: ClipBackbone):
    """The derived-cache entry of an image: [image embedding; windows of every scale] and the patch tokens."""

    def compute(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_emb, windows, patches = encode_windows(backbone, images)
        return torch.cat([image_emb[:, None], *windows], dim=1), patches

    return compute


def _unpack(first: torch.Tensor, grid: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    sizes = [(grid - s + 1) ** 2 for s in SCALES]
    parts = first.float()[:, 1:].split(sizes, dim=1)
    return first.float()[:, 0], list(parts)


class WinCLIP(Method):
    """Zero-shot WinCLIP; its 3-class probabilities are plain zero-shot CLIP with the class prompts (an addition:
    WinCLIP itself is binary)."""

    name = "WinCLIP"
    needs_images = True
    few_shot = False
    card = MethodCard(
        family="zero-shot",
        image_score="softmax(cos(image embedding, [normal, abnormal] ensemble means) / 0.07)[abnormal]",
        localisation="2x2 and 3x3 patch windows re-encoded through the tower, window P(abnormal) harmonically "
                     "aggregated onto patches; harmonic mean with the image score over scales",
        smoothing="bilinear, no smoothing (as anomalib)",
        classes="zero-shot class prompts on the class token (not part of WinCLIP)",
        reference="Jeong et al., WinCLIP, CVPR 2023; parity with anomalib's WinClipModel (benchmarks/winclip_parity.py)",
        notes=[("prompt ensemble: the benchmark's (WinCLIP's state words and 10 of its templates, object 'breast "
               "ultrasound image'), not anomalib's 4 x 19 list"),
               "window embeddings cached in float16 (parity measured in float32)"],
    )

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=0.0)
        self.text = text_embeddings(backbone, *default_prompts())
        self.classes = class_text(backbone, class_names)
        self.memory: list[torch.Tensor] | None = None

    def fit(self, data: FitData) -> dict[str, Any]:
        self.store = data.store
        self.windows = derived_store(data.store, f"winclip-windows-{'-'.join(map(str, SCALES))}", _pack(self.backbone))
        if not self.few_shot:
            return {}
        normal = [it for it, label in zip(data.shot_items, data.labels.tolist()) if label == 0]
        if not normal:
            raise ValueError("WinCLIP+ needs at least one normal shot")
        feats = self.windows.get(normal)
        _, windows = _unpack(feats.cls_token, self.backbone.grid_size)
        self.memory = [feats.patch_tokens.float().flatten(0, 1)] + [w.flatten(0, 1) for w in windows]
        return {"reference_images": len(normal)}

    @torch.no_grad()
    def predict_items(self, items: list[dict]) -> Prediction:
        feats = self.windows.get(items)
        image_emb, windows = _unpack(feats.cls_token, self.backbone.grid_size)
        score, patch = winclip_scores(image_emb, windows, feats.patch_tokens.float(), self.text,
                                      self.backbone.grid_size, self.memory)
        probs = (LOGIT_SCALE * normalised_cls(self.store.get(items)) @ self.classes.T).softmax(dim=-1)
        return Prediction(score, probs, self.maps(patch))

    def predict(self, features):
        raise TypeError("WinCLIP re-encodes windows of the image: the protocol calls predict_items")


class WinCLIPPlus(WinCLIP):
    """WinCLIP+: the zero-shot maps plus the visual association to the normal shots' patches and windows."""

    name = "WinCLIP+"
    few_shot = True
    card = MethodCard(
        family="few-shot anomaly detection (normal reference, no training)",
        image_score="mean of the zero-shot WinCLIP score and the max of the few-shot visual map",
        localisation="mean of the zero-shot WinCLIP map and the few-shot map (mean over full-scale patch tokens, "
                     "2x2 and 3x3 windows of half the min cosine distance to the normal shots, harmonically aggregated)",
        smoothing="bilinear, no smoothing (as anomalib)",
        classes="zero-shot class prompts on the class token (not part of WinCLIP+)",
        reference="Jeong et al., WinCLIP+, CVPR 2023; parity with anomalib's WinClipModel (benchmarks/winclip_parity.py)",
        notes=WinCLIP.card.notes + ["reference memory: the normal shots only (k of them)"],
    )
