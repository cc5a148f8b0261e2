"""CLIP anomaly-localisation baselines trained on the shots' masks: April-GAN, MVFA, AnomalyCLIP-style prompts.

They are binary (normal / abnormal): no fine-grained class, so their 3-class metrics are not applicable.
April-GAN and AnomalyCLIP-style read the cached taps of the frozen tower; MVFA inserts its adapters into the tower
as its authors do, so it reads the images (the library model, monai_ultraad.networks.mvfa).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import (
    LOGIT_SCALE,
    ContextPrompts,
    MapMaker,
    SegmentationLoss,
    abnormal_labels,
    normalised_cls,
    project_patches,
    projection,
    state_text,
    train_minibatches,
    two_class_logits,
)
from monai_ultraad.networks import VisualFeatures

EPOCHS = 30


def _normal_memory(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(L, M, D) patch tokens of the normal shots, per layer: the reference memory of few-shot AD."""
    normal = tokens[labels == 0]
    if normal.shape[0] == 0:
        raise ValueError("few-shot anomaly memory needs at least one normal shot")
    return normal.permute(1, 0, 2, 3).flatten(1, 2)  # (L, n*N, D)


def _nn_distance(tokens: torch.Tensor, memory: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(B, N) half cosine distance of every patch to its nearest memory patch (normalised inputs)."""
    best = None
    for start in range(0, memory.shape[0], chunk):
        sim = tokens @ memory[start:start + chunk].T  # (B, N, m)
        part = sim.amax(dim=-1)
        best = part if best is None else torch.maximum(best, part)
    return 0.5 * (1.0 - best)


class AprilGAN(Method):
    """April-GAN / VAND (Chen et al., 2023): one linear map per tapped layer from patch tokens into the text space,
    trained with Focal + Dice against the fixed state-prompt ensemble; few-shot memory of the normal shots' patch
    tokens adds a nearest-neighbour map. Image score: zero-shot class-token score plus the map's maximum, halved."""

    name = "April-GAN"
    card = MethodCard("few-shot anomaly segmentation",
                      "0.5 * (P(abnormal | class token) + max of the map)",
                      "mean over layers of [trained linear projection vs state ensemble] + normal-memory NN map, halved",
                      "bilinear + Gaussian sigma 4 px", "binary only", "Chen et al., April-GAN, arXiv 2305.17382")

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=4.0)
        self.text = state_text(backbone)

    def fit(self, data: FitData) -> dict[str, Any]:
        n_layers = data.shots.patch_tokens.shape[1]
        proj = projection(self.backbone)
        self.linears = nn.ModuleList()
        for _ in range(n_layers):  # start from CLIP's own projection, so epoch 0 is the zero-shot map
            layer = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
            layer.weight.data.copy_(proj.T)
            self.linears.append(layer)
        patches, masks = data.shots.patch_tokens.float(), data.masks
        loss = SegmentationLoss()
        grid = self.backbone.grid_size

        def step(idx: torch.Tensor) -> torch.Tensor:
            total = 0.0
            for i, linear in enumerate(self.linears):
                tokens = F.normalize(linear(patches[idx, i]), dim=-1)
                total = total + loss(two_class_logits(tokens, self.text), masks[idx], grid)
            return total / len(self.linears)

        history = train_minibatches(self.linears.parameters(), step, len(data.labels), EPOCHS, data.seed)
        self.memory = _normal_memory(project_patches(self.backbone, data.shots), data.labels)
        return {"epochs": EPOCHS, "final_loss": history[-1]}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        patches = features.patch_tokens.float()
        zs = torch.stack([
            two_class_logits(F.normalize(lin(patches[:, i]), dim=-1), self.text).softmax(dim=1)[:, 1]
            for i, lin in enumerate(self.linears)
        ]).mean(dim=0)
        projected = project_patches(self.backbone, features)
        fs = torch.stack([_nn_distance(projected[:, i], self.memory[i]) for i in range(projected.shape[1])]).mean(0)
        amap = self.maps(0.5 * (zs + fs))
        cls_score = (LOGIT_SCALE * normalised_cls(features) @ self.text.T).softmax(dim=-1)[:, 1]
        return Prediction(0.5 * (cls_score + amap.flatten(1).amax(dim=1)), None, amap)


class MVFA(Method):
    """MVFA (Huang et al., CVPR 2024) as its authors built it: :class:`monai_ultraad.networks.mvfa.MVFA` trained by
    :func:`monai_ultraad.mvfa_engine.fit` (adapters inside the tower after every tapped block, 11 views per shot,
    Adam (0.5, 0.999), lr 1e-3, best epoch and branch statistics on validation images).

    The adapted tower changes every block after the first adapter, so this method reads images, not the shared
    cached taps (:attr:`needs_images`): the residual stream after the first adapted block is cached per view, the
    rest of the tower runs every step. Options: ``epochs`` (default 50), ``views`` (default 11), ``val_every``."""

    name = "MVFA"
    needs_images = True
    card = MethodCard("few-shot anomaly segmentation (adapters inside the tower)",
                      "max of the fused map (segmentation mode, the shots have masks)",
                      "0.5 * minmax(zero-shot: sum over levels of P(abnormal), seg-adapter tokens vs text) + "
                      "0.5 * minmax(few-shot: sum over levels of min(1 - cos) to the normal shots' 11 views)",
                      "bilinear (align_corners=True), no smoothing", "binary only", "Huang et al., MVFA, CVPR 2024",
                      notes=[
                          ("equal to the official code (MediaBrain-SJTU/MVFA-AD) on the same random ViT-L-14-336 "
                          "weights: tokens, maps, memory, scores, losses, gradients (fp32 max abs diff in "
                          "monai_ultraad/networks/mvfa.py's docstring and the issue-15 report)"),
                          "min-max statistics of the two branches from validation images (official: the test set)",
                          "best epoch on validation images (official: the test set)",
                          "detection loss BCE on the mean patch probability (official: BCEWithLogits on it)",
                          "activation as the weights need (QuickGELU for OpenAI weights; official: GELU)",
                          "input: the package preprocessing at the backbone's size (official: 240 px, no mean/std)",
                      ])

    _caches: ClassVar[dict[int, Any]] = {}  # per backbone: validation images recur over k and seeds

    def fit(self, data: FitData) -> dict[str, Any]:
        from monai_ultraad import mvfa_engine

        config = mvfa_engine.MVFAConfig(epochs=int(self.options.get("epochs", 50)),
                                        views=int(self.options.get("views", 11)),
                                        val_every=int(self.options.get("val_every", 1)), seed=data.seed)
        self.model = mvfa_engine.build_model(self.backbone, seed=data.seed)
        cache = self._caches.setdefault(id(self.backbone), mvfa_engine.PrefixCache(self.model))
        cache.model = self.model
        self.cache = cache
        result = mvfa_engine.fit(self.model, data.shot_items, data.val_items, config, cache, progress=False)
        steps = config.views * len(data.shot_items)
        return {"best_epoch": result.best_epoch, "epochs": config.epochs, "views": config.views,
                "steps_per_epoch": steps,
                "mean_epoch_seconds": sum(result.epoch_seconds) / max(len(result.epoch_seconds), 1),
                "prefix_seconds": result.feature_seconds, "mode": self.model.mode}

    @torch.no_grad()
    def predict_items(self, items: list[dict]) -> Prediction:
        from monai_ultraad import mvfa_engine

        chunks = list(mvfa_engine.iter_outputs(self.model, items, self.cache, batch_size=len(items)))
        out = chunks[0][1]
        return Prediction(out.anomaly_score.cpu(), None, out.anomaly_map.cpu())

    def predict(self, features: VisualFeatures) -> Prediction:
        raise TypeError("MVFA runs the adapted tower on images: the protocol calls predict_items")


class AnomalyCLIPStyle(Method):
    """AnomalyCLIP-style object-agnostic prompts (Zhou et al., ICLR 2024): learnable ``[V..] object.`` and
    ``[W..] damaged object.`` contexts, trained with a global (class token, cross-entropy) and local (patch maps of
    every tapped layer, Dice + Focal) loss. Without AnomalyCLIP's DPAM attention change and deep text prompts,
    which need the towers themselves."""

    name = "AnomalyCLIP-style"
    card = MethodCard("prompt learning (anomaly)", "P(abnormal | class token) with the learnt prompts",
                      "mean over tapped layers of projected patches vs learnt normal/abnormal prompts",
                      "bilinear + Gaussian sigma 4 px", "binary only", "Zhou et al., AnomalyCLIP, ICLR 2024",
                      notes=["no DPAM and no deep text prompt tokens (the frozen towers are shared, cached)"])

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=4.0)

    def fit(self, data: FitData) -> dict[str, Any]:
        self.prompts = ContextPrompts(self.backbone, ["object", "damaged object"], n_ctx=12, shared=False,
                                      seed=data.seed)
        cls, tokens = normalised_cls(data.shots), project_patches(self.backbone, data.shots)
        targets, masks = abnormal_labels(data.labels), data.masks
        loss = SegmentationLoss()
        grid = self.backbone.grid_size

        def step(idx: torch.Tensor) -> torch.Tensor:
            text = self.prompts()
            total = F.cross_entropy(LOGIT_SCALE * cls[idx] @ text.T, targets[idx])
            for i in range(tokens.shape[1]):
                total = total + loss(two_class_logits(tokens[idx, i], text), masks[idx], grid) / tokens.shape[1]
            return total

        history = train_minibatches(self.prompts.parameters(), step, len(targets), EPOCHS, data.seed)
        with torch.no_grad():
            self.text = self.prompts()
        return {"epochs": EPOCHS, "final_loss": history[-1]}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        score = (LOGIT_SCALE * normalised_cls(features) @ self.text.T).softmax(dim=-1)[:, 1]
        tokens = project_patches(self.backbone, features)
        patch = torch.stack([two_class_logits(tokens[:, i], self.text).softmax(dim=1)[:, 1]
                             for i in range(tokens.shape[1])]).mean(0)
        return Prediction(score, None, self.maps(patch))
