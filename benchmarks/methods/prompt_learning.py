"""Prompt learning: CoOp (Zhou et al., IJCV 2022) and CoCoOp (Zhou et al., CVPR 2022).

Both learn context tokens in front of each class phrase and classify the class token. Their anomaly map is the
learnt class prompts compared with the projected patch tokens (abnormal = 1 - P(normal)); it is never trained
for localisation, which the method card says.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import (
    CLASS_PHRASES,
    LOGIT_SCALE,
    ContextPrompts,
    MapMaker,
    normalised_cls,
    probs_from_logits,
    project_patches,
    train_minibatches,
    val_nll,
)
from monai_ultraad.networks import VisualFeatures


class CoOp(Method):
    """Shared learnable context (8 tokens) before each class phrase; epochs chosen on validation log-likelihood."""

    name = "CoOp"
    conditional = False
    EPOCHS = 40
    card = MethodCard("prompt learning", "1 - P(normal)",
                      "learnt class prompts vs projected last-layer patch tokens (not trained for it)",
                      "bilinear + Gaussian sigma 4 px", "learnt class prompts on the class token",
                      "Zhou et al., CoOp, IJCV 2022")

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=4.0)

    def _text(self, f: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and getattr(self, "_frozen_text", None) is not None:
            return self._frozen_text  # after fit the prompts no longer change: encode them once
        return self.prompts()  # (C, D)

    def _logits(self, f: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        text = self._text(f) if text is None else text
        if text.ndim == 2:
            return LOGIT_SCALE * f @ text.T
        return LOGIT_SCALE * torch.einsum("bd,bcd->bc", f, text)

    def _build(self, seed: int) -> list[nn.Parameter]:
        self.prompts = ContextPrompts(self.backbone, [CLASS_PHRASES[c] for c in self.class_names], n_ctx=8, seed=seed)
        return list(self.prompts.parameters())

    def fit(self, data: FitData) -> dict[str, Any]:
        f, y = normalised_cls(data.shots), data.labels
        vf, vy = normalised_cls(data.val_features), data.val_labels
        params = self._build(data.seed)
        best = (float("inf"), 0, None)
        self._frozen_text = None
        for chunk in range(1, self.EPOCHS // 10 + 1):
            train_minibatches(params, lambda idx: F.cross_entropy(self._logits(f[idx]), y[idx]), len(y), epochs=10,
                              seed=data.seed + chunk, batch_size=8, lr=2e-3)
            with torch.no_grad():
                nll = val_nll(self._logits(vf), vy)
            if nll < best[0]:
                best = (nll, chunk * 10, [p.detach().clone() for p in params])
        with torch.no_grad():
            for p, saved in zip(params, best[2]):
                p.copy_(saved)
            self._frozen_text = None if self.conditional else self.prompts()
        return {"epochs": best[1], "val_nll": best[0]}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        f = normalised_cls(features)
        text = self._text(f)  # once per batch: CoCoOp's per-image prompts are its costly part
        probs, score = probs_from_logits(self._logits(f, text))
        last = VisualFeatures(features.cls_token, features.patch_tokens[:, -1:])
        tokens = project_patches(self.backbone, last)[:, 0]  # (B, N, D): the last tapped layer only
        sim = (torch.einsum("bnd,cd->bcn", tokens, text) if text.ndim == 2
               else torch.einsum("bnd,bcd->bcn", tokens, text))
        patch = 1.0 - (LOGIT_SCALE * sim).softmax(dim=1)[:, 0]
        return Prediction(score, probs, self.maps(patch))


class CoCoOp(CoOp):
    """CoOp plus a Meta-Net (D -> D/16 -> width) that shifts every context token by an image-conditional bias."""

    name = "CoCoOp"
    conditional = True
    EPOCHS = 30
    card = MethodCard("prompt learning", "1 - P(normal)",
                      "image-conditional class prompts vs projected last-layer patch tokens (not trained for it)",
                      "bilinear + Gaussian sigma 4 px", "image-conditional class prompts on the class token",
                      "Zhou et al., CoCoOp, CVPR 2022")

    def _build(self, seed: int) -> list[nn.Parameter]:
        params = super()._build(seed)
        dim, width = self.backbone.embed_dim, self.prompts.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.meta = nn.Sequential(nn.Linear(dim, max(dim // 16, 4)), nn.ReLU(inplace=True),
                                      nn.Linear(max(dim // 16, 4), width))
        return params + list(self.meta.parameters())

    def _text(self, f: torch.Tensor) -> torch.Tensor:
        return self.prompts(self.meta(f))  # (B, C, D)
