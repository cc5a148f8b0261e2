"""CLIP anomaly-localisation baselines trained on the shots' masks: April-GAN, MVFA, AnomalyCLIP-style prompts.

They are binary (normal / abnormal): no fine-grained class, so their 3-class metrics are not applicable.
All three read the cached taps of the frozen tower; adapters that in the original insert into the tower (MVFA)
are applied to the tapped tokens instead, which the method cards say.
"""

from __future__ import annotations

from typing import Any

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


class _ResidualAdapter(nn.Module):
    """MVFA's adapter: bottleneck MLP with LeakyReLU, blended residually with the input tokens."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.LeakyReLU(inplace=False),
                                 nn.Linear(hidden, width, bias=False), nn.LeakyReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.8 * x + 0.2 * self.net(x)


class MVFA(Method):
    """MVFA (Huang et al., CVPR 2024): dual (segmentation / detection) residual adapters per tapped layer, trained
    with Dice + Focal (segmentation) and BCE (detection) against the state prompts at every level; at test time a
    zero-shot branch (adapted features vs text) and a few-shot branch (nearest normal-shot memory) are averaged.

    MVFA inserts the adapters into the tower so later blocks see adapted tokens; from cached taps each level is
    adapted on its own (the method card says so)."""

    name = "MVFA"
    card = MethodCard("few-shot anomaly segmentation",
                      "0.5 * mean over levels of mean detection-patch P(abnormal) + 0.5 * mean over levels of max distance to the normal detection memory",
                      "0.5 * zero-shot branch (segmentation adapters vs text) + 0.5 * few-shot branch (normal memory)",
                      "bilinear, no smoothing", "binary only", "Huang et al., MVFA, CVPR 2024",
                      notes=["adapters applied to cached taps, not inserted into the tower"])

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=0.0)
        self.text = state_text(backbone)
        self.proj = projection(backbone)

    def _adapted(self, patches: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        seg = F.normalize(self.seg[i](patches) @ self.proj, dim=-1)
        det = F.normalize(self.det[i](patches) @ self.proj, dim=-1)
        return seg, det

    def fit(self, data: FitData) -> dict[str, Any]:
        n_layers, width = data.shots.patch_tokens.shape[1], data.shots.patch_tokens.shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed)
            self.seg = nn.ModuleList(_ResidualAdapter(width, width // 2) for _ in range(n_layers))
            self.det = nn.ModuleList(_ResidualAdapter(width, width // 2) for _ in range(n_layers))
        patches, masks = data.shots.patch_tokens.float(), data.masks
        targets = abnormal_labels(data.labels).float()
        loss = SegmentationLoss()
        grid = self.backbone.grid_size

        def step(idx: torch.Tensor) -> torch.Tensor:
            total = 0.0
            for i in range(n_layers):
                seg, det = self._adapted(patches[idx, i], i)
                total = total + loss(two_class_logits(seg, self.text), masks[idx], grid)
                det_score = two_class_logits(det, self.text).softmax(dim=1)[:, 1].mean(dim=1)
                total = total + F.binary_cross_entropy(det_score.clamp(1e-6, 1 - 1e-6), targets[idx])
            return total / n_layers

        params = list(self.seg.parameters()) + list(self.det.parameters())
        history = train_minibatches(params, step, len(data.labels), EPOCHS, data.seed)
        with torch.no_grad():
            seg_mem, det_mem = [], []
            normal = patches[data.labels == 0]
            if normal.shape[0] == 0:
                raise ValueError("MVFA's few-shot branch needs at least one normal shot")
            for i in range(n_layers):
                seg, det = self._adapted(normal[:, i], i)
                seg_mem.append(seg.flatten(0, 1))
                det_mem.append(det.flatten(0, 1))
        self.seg_memory, self.det_memory = seg_mem, det_mem
        return {"epochs": EPOCHS, "final_loss": history[-1]}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        patches = features.patch_tokens.float()
        zs_maps, fs_maps, zs_scores, fs_scores = [], [], [], []
        for i in range(patches.shape[1]):
            seg, det = self._adapted(patches[:, i], i)
            zs_maps.append(two_class_logits(seg, self.text).softmax(dim=1)[:, 1])
            zs_scores.append(two_class_logits(det, self.text).softmax(dim=1)[:, 1].mean(dim=1))
            fs_maps.append(_nn_distance(seg, self.seg_memory[i]))
            fs_scores.append(_nn_distance(det, self.det_memory[i]).amax(dim=1))
        amap = self.maps(0.5 * torch.stack(zs_maps).mean(0) + 0.5 * torch.stack(fs_maps).mean(0))
        score = 0.5 * torch.stack(zs_scores).mean(0) + 0.5 * torch.stack(fs_scores).mean(0)
        return Prediction(score, None, amap)


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
