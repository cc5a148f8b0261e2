"""Zero-shot WinCLIP-style prompting (Jeong et al., CVPR 2023): no training, the prompt ensemble only."""

from __future__ import annotations

import torch

from benchmarks.methods.base import Method, MethodCard, Prediction
from benchmarks.methods.common import (
    LOGIT_SCALE,
    MapMaker,
    class_text,
    normalised_cls,
    project_patches,
    state_text,
    two_class_logits,
)
from monai_ultraad.networks import VisualFeatures


class ZeroShotWinCLIP(Method):
    """Compositional prompt ensemble against the class token (image score) and the projected patch tokens (map).

    WinCLIP also re-encodes multi-scale windows of the image; that needs the image tower once per window and cannot
    run from a per-image feature cache, so the maps here come from the patch tokens of the tapped layers (averaged),
    as in WinCLIP's successors. The 3-class probabilities are plain zero-shot CLIP with class prompts.
    """

    name = "zero-shot WinCLIP-style"
    card = MethodCard(
        family="zero-shot",
        image_score="softmax(100 cos(class token, [normal, abnormal] ensemble))[abnormal]",
        localisation="patch tokens of every tapped layer, projected, vs the state ensemble; mean over layers",
        smoothing="bilinear + Gaussian sigma 4 px",
        classes="zero-shot class prompts on the class token",
        reference="Jeong et al., WinCLIP, CVPR 2023",
        notes=["no multi-scale windows (not computable from a per-image feature cache)"],
    )

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        self.maps = MapMaker(backbone, sigma=4.0)
        self.states = state_text(backbone)
        self.classes = class_text(backbone, class_names)

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        cls = normalised_cls(features)
        score = (LOGIT_SCALE * cls @ self.states.T).softmax(dim=-1)[:, 1]
        probs = (LOGIT_SCALE * cls @ self.classes.T).softmax(dim=-1)
        tokens = project_patches(self.backbone, features)  # (B, L, N, D)
        patch = torch.stack(
            [two_class_logits(tokens[:, i], self.states).softmax(dim=1)[:, 1] for i in range(tokens.shape[1])]
        ).mean(dim=0)
        return Prediction(score, probs, self.maps(patch))
