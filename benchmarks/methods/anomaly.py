"""CLIP anomaly-localisation baselines trained on the shots' masks: April-GAN, MVFA (AnomalyCLIP: anomalyclip.py).

They are binary (normal / abnormal): no fine-grained class, so their 3-class metrics are not applicable.
April-GAN reads raw residual taps of the frozen tower (cached apart from the shared taps); MVFA inserts its adapters into the tower
as its authors do, so it reads the images (the library model, monai_ultraad.networks.mvfa).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import (
    LOGIT_SCALE,
    gaussian_smooth,
    state_text,
    to_grid,
    two_class_logits,
)
from benchmarks.methods.derived import derived_store, raw_taps
from monai_ultraad.networks import VisualFeatures

EPOCHS = 30


def focal_loss(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of -(1 - p_t)^gamma log p_t of 2-class ``logits`` (B, 2, H, W) against binary ``masks``
    (B, 1, H, W): April-GAN's focal loss (alpha 1). MONAI's FocalLoss averages over the class axis as well (half)."""
    log_p = logits.log_softmax(dim=1).gather(1, masks.long())
    return -((1.0 - log_p.exp()) ** gamma * log_p).mean()


class AprilGAN(Method):
    """April-GAN / VAND (Chen et al., 2023; ByChelsea/VAND-APRIL-GAN), few-shot mode.

    One ``nn.Linear`` (with bias, PyTorch's default initialisation) per tapped layer maps the RAW residual tokens
    of that block (no final LayerNorm) into the text space; trained with Adam (betas 0.5, 0.999, lr 1e-3), per layer
    Focal loss on the 2-class softmax map plus binary Dice on its abnormal channel, summed over layers. Zero-shot map:
    sum over layers of the upsampled softmax P(abnormal) of the normalised linear outputs against the state
    ensemble (scale 100). Few-shot map: sum over layers of min(1 - cos) of each raw token to the raw tokens of the
    normal shots at that layer. Map = zero-shot + few-shot maps, Gaussian-smoothed (sigma 4). Image score:
    0.5 * (P(abnormal | class token) + the map maximum min-max normalised)."""

    name = "April-GAN"
    card = MethodCard("few-shot anomaly segmentation",
                      "0.5 * (P(abnormal | class token) + min-max normalised max of the map)",
                      "sum over layers of [trained linear layer on raw residual tokens vs state ensemble] + sum over "
                      "layers of the normal-memory min(1 - cos) on raw tokens",
                      "bilinear (align_corners=True) + Gaussian sigma 4 px (scipy.ndimage.gaussian_filter's, "
                      "mirrored edges)", "binary only",
                      "Chen et al., April-GAN, arXiv 2305.17382; ByChelsea/VAND-APRIL-GAN",
                      notes=[("equal to the official test.py on the same random ViT-B-16 weights, linear layers "
                             "and inputs: tapped tokens, projected tokens, zero- and few-shot maps, class-token "
                             "P(abnormal), image score (fp32 max abs diff <= 2e-5; "
                             "benchmarks/results/april-gan-parity/)"),
                             ("Gaussian sigma 4 on the summed map (official test.py: no smoothing); edges as "
                             "scipy.ndimage.gaussian_filter, which is what the CLIP anomaly-map code calls"),
                             "linear layers trained on the k-shot masks (official: on an auxiliary dataset, "
                             "MVTec <-> VisA, 200 epochs batch 16); epochs here: " + str(EPOCHS) + ", batch 8",
                             "min-max of the map maxima from the validation images (official: over the test set)",
                             "Focal loss without the official label smoothing of 1e-5",
                             "prompts: the benchmark's state ensemble (official: its own templates, same idea)",
                             ("the summed map divided by its bound 2 L (L tapped layers) to lie in [0, 1] as the "
                             "metrics take it (ranks and Dice at the matching threshold unchanged)")])

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.blur = gaussian_smooth  # sigma 4, scipy's edges (MONAI's GaussianFilter zero-pads them)
        self.text = state_text(backbone)
        self.dice = DiceLoss(smooth_nr=1.0, smooth_dr=1.0)  # per image, smoothing 1: April-GAN's binary Dice

    def _raw(self, items: list[dict]) -> VisualFeatures:
        return self.raw.get(items)

    def _zero_shot_logits(self, raw_patches: torch.Tensor) -> list[torch.Tensor]:
        """Per layer (B, 2, g, g) logits of the linear outputs against the text."""
        return [to_grid(two_class_logits(F.normalize(lin(raw_patches[:, i]), dim=-1), self.text), self.grid)
                for i, lin in enumerate(self.linears)]

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)

    def fit(self, data: FitData) -> dict[str, Any]:
        self.grid, self.size = self.backbone.grid_size, self.backbone.image_size
        self.raw = derived_store(data.store, "raw-taps", raw_taps(self.backbone))
        shots = self._raw(data.shot_items)
        patches, masks = shots.patch_tokens.float(), (data.masks > 0.5).float()
        n_layers = patches.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed)
            self.linears = nn.ModuleList(nn.Linear(patches.shape[-1], self.text.shape[1]) for _ in range(n_layers))
        optimizer = torch.optim.Adam(self.linears.parameters(), lr=1e-3, betas=(0.5, 0.999))
        generator = torch.Generator().manual_seed(data.seed)
        history = []
        for _ in range(EPOCHS):
            total = 0.0
            for idx in torch.randperm(len(data.labels), generator=generator).split(8):
                loss = 0.0
                for logits in self._zero_shot_logits(patches[idx]):
                    up = self._up(logits)
                    loss = loss + focal_loss(up, masks[idx]) + self.dice(up.softmax(dim=1)[:, 1:], masks[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / len(data.labels))
        normal = [it for it, label in zip(data.shot_items, data.labels.tolist()) if label == 0]
        if not normal:
            raise ValueError("April-GAN's few-shot memory needs at least one normal shot")
        self.memory = self._raw(normal).patch_tokens.float().permute(1, 0, 2, 3).flatten(1, 2)  # (L, M, W)
        self.score_range = (0.0, 1.0)
        maxima = torch.cat([self._map(self._raw(data.val_items[i:i + 32]))[0].flatten(1).amax(dim=1)
                            for i in range(0, len(data.val_items), 32)])
        self.score_range = (float(maxima.min()), float(maxima.max()))
        return {"epochs": EPOCHS, "final_loss": history[-1], "val_map_max_range": self.score_range}

    @torch.no_grad()
    def branches(self, raw: VisualFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The zero-shot map, the few-shot (memory) map, both (B, 1, S, S) before smoothing, and P(abnormal | class
        token) (B,): what benchmarks/april_gan_parity.py compares with the official code."""
        patches = raw.patch_tokens.float()
        zero = sum(self._up(logits).softmax(dim=1)[:, 1:] for logits in self._zero_shot_logits(patches))
        tokens = F.normalize(patches, dim=-1)
        few = sum(self._up(to_grid(1.0 - (tokens[:, i] @ F.normalize(self.memory[i], dim=-1).T).amax(-1),
                                   self.grid).unsqueeze(1)) for i in range(patches.shape[1]))
        cls_score = (LOGIT_SCALE * F.normalize(raw.cls_token.float(), dim=-1) @ self.text.T).softmax(dim=-1)[:, 1]
        return zero, few, cls_score

    @torch.no_grad()
    def _map(self, raw: VisualFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        zero, few, cls_score = self.branches(raw)
        return self.blur(zero + few), cls_score

    @torch.no_grad()
    def predict_items(self, items: list[dict]) -> Prediction:
        amap, cls_score = self._map(self._raw(items))
        low, high = self.score_range
        peak = (amap.flatten(1).amax(dim=1) - low) / max(high - low, 1e-12)
        # the summed map lies in [0, 2 L]; the metrics take maps in [0, 1]: a fixed scale, ranks unchanged
        return Prediction(0.5 * (cls_score + peak), None, (amap / (2 * len(self.linears))).clamp(0.0, 1.0))

    needs_images = True

    def predict(self, features: VisualFeatures) -> Prediction:
        raise TypeError("April-GAN reads raw residual taps: the protocol calls predict_items")


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
