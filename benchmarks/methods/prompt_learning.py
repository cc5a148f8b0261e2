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


def coop_epochs(k: int) -> int:
    """CoOp's schedule length by shots per class (its configs: 50 for 1-2 shots, 100 for 4-8, 200 for 16)."""
    return 50 if k <= 2 else 100 if k <= 8 else 200


class CoOp(Method):
    """CoOp (Zhou et al., IJCV 2022) as its paper trains it: one shared context of 16 tokens (N(0, 0.02)) before
    each class phrase, SGD (lr 2e-3, momentum 0.9, weight decay 5e-4), batch 32, cosine schedule with a constant
    warm-up epoch at 1e-5, 50 / 100 / 200 epochs for 1-2 / 4-8 / 16 shots, the last epoch kept. Option ``epochs``
    shortens the schedule (a config that does so says it next to the numbers)."""

    name = "CoOp"
    conditional = False
    N_CTX, LR, BATCH, INIT_WORDS = 16, 2e-3, 32, None
    card = MethodCard("prompt learning", "1 - P(normal)",
                      "learnt class prompts vs projected last-layer patch tokens (not trained for it)",
                      "bilinear + Gaussian sigma 4 px", "learnt class prompts on the class token",
                      "Zhou et al., CoOp, IJCV 2022",
                      notes=[("equal to the official trainers (KaiyangZhou/CoOp) and Dassl's SGD + warm-up + "
                             "cosine on the same random weights: text features 1.6e-7, logits 7e-6 at their logit "
                             "scale, contexts after 3 epochs 8.5e-6 (benchmarks/results/coop-parity/)"),
                             ("logit scale the constant 100 (official: the weights' exp(logit_scale), 100.03 for "
                             "OpenAI's fp16 checkpoints)"),
                             "the map is an addition of this benchmark (CoOp does not localise)",
                             "class-token features of the un-augmented image (CoOp: random resized crops, flips)"])

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
        self.prompts = ContextPrompts(self.backbone, [CLASS_PHRASES[c] for c in self.class_names], n_ctx=self.N_CTX,
                                      seed=seed, init_words=self.INIT_WORDS)
        return list(self.prompts.parameters())

    def _epochs(self, k: int) -> int:
        return int(self.options.get("epochs", coop_epochs(k)))

    def fit(self, data: FitData) -> dict[str, Any]:
        f, y = normalised_cls(data.shots), data.labels
        vf, vy = normalised_cls(data.val_features), data.val_labels
        params = self._build(data.seed)
        self._frozen_text = None
        k = int(torch.bincount(y).max())
        epochs = self._epochs(k)
        history = train_minibatches(params, lambda idx: F.cross_entropy(self._logits(f[idx]), y[idx]), len(y),
                                    epochs=epochs, seed=data.seed, batch_size=self.BATCH, lr=self.LR,
                                    weight_decay=5e-4, sgd_paper=True)
        with torch.no_grad():
            self._frozen_text = None if self.conditional else self.prompts()
            nll = val_nll(self._logits(vf), vy)
        return {"epochs": epochs, "paper_epochs": self._paper_epochs(k), "final_loss": history[-1], "val_nll": nll}

    def _paper_epochs(self, k: int) -> int:
        return coop_epochs(k)

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
    """CoCoOp (Zhou et al., CVPR 2022) as its paper trains it: 4 context tokens initialised from "a photo of a",
    a Meta-Net (D -> D/16 -> ReLU -> width) adding an image-conditional bias to every context token, SGD (lr 2e-3,
    momentum 0.9, weight decay 5e-4), batch 1, 10 epochs, cosine schedule with a constant warm-up epoch at 1e-5."""

    name = "CoCoOp"
    conditional = True
    N_CTX, LR, BATCH, INIT_WORDS = 4, 2e-3, 1, "a photo of a"
    card = MethodCard("prompt learning", "1 - P(normal)",
                      "image-conditional class prompts vs projected last-layer patch tokens (not trained for it)",
                      "bilinear + Gaussian sigma 4 px", "image-conditional class prompts on the class token",
                      "Zhou et al., CoCoOp, CVPR 2022", notes=CoOp.card.notes)

    def _paper_epochs(self, k: int) -> int:
        return 10

    def _epochs(self, k: int) -> int:
        return int(self.options.get("epochs", 10))

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
