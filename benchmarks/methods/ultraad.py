"""UltraAD (this package) and its ablations, trained with the package's own :func:`monai_ultraad.engine.fit`."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from monai_ultraad import engine
from monai_ultraad.networks import VisualFeatures

_CARD = {
    "family": "UltraAD",
    "image_score": "mask-guided: 0.5 * (1 - P(normal) + max of the map)",
    "localisation": "fused image-aware prompts vs adapted patch tokens, mean over tapped layers",
    "smoothing": "bilinear, no smoothing",
    "classes": "lesion-aware text + few-shot memory on the refined class token",
    "reference": "Zhou et al., UltraAD, 2025 (monai_ultraad.networks.UltraAD)",
}


class UltraADMethod(Method):
    """The full model; epochs chosen on validation by :func:`engine.fit` (its best-epoch selection).

    Ablations switch one part off (:attr:`model_kwargs`) or drop the classification loss (:attr:`cls_weight` 0,
    the paper's "without joint learning": no image-level output is reported, as in the paper's '-')."""

    name = "UltraAD"
    card = MethodCard(**_CARD)
    model_kwargs: ClassVar[dict[str, Any]] = {}
    cls_weight: ClassVar[float] = 1.0
    reports_image_level: ClassVar[bool] = True

    def fit(self, data: FitData) -> dict[str, Any]:
        epochs = int(self.options.get("epochs", 20))
        val_every = int(self.options.get("val_every", 2))
        self.model = engine.build_model(self.backbone, seed=data.seed, class_names=self.class_names,
                                        **self.model_kwargs)
        config = engine.TrainConfig(epochs=epochs, seed=data.seed, cls_weight=self.cls_weight, val_every=val_every)
        result = engine.fit(self.model, data.shot_items, data.val_items, data.store, config, progress=False)
        return {"best_epoch": result.best_epoch, "epochs": epochs,
                "mean_epoch_seconds": sum(result.epoch_seconds) / max(len(result.epoch_seconds), 1)}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        self.model.eval()
        out = self.model.forward_features(features)
        if not self.reports_image_level:
            return Prediction(None, None, out.anomaly_map)
        return Prediction(out.anomaly_score, out.class_probs, out.anomaly_map)


class UltraADNoImageAwarePrompts(UltraADMethod):
    name = "UltraAD w/o image-aware prompts"
    card = MethodCard(**{**_CARD, "localisation": "fixed hand-written state prompts vs adapted patch tokens"})
    model_kwargs: ClassVar[dict[str, Any]] = {"image_aware_prompts": False}


class UltraADNoMemory(UltraADMethod):
    name = "UltraAD w/o memory bank"
    card = MethodCard(**{**_CARD, "classes": "lesion-aware text on the refined class token (no few-shot memory)"})
    model_kwargs: ClassVar[dict[str, Any]] = {"use_memory": False}


class UltraADNoFusion(UltraADMethod):
    name = "UltraAD w/o fusion"
    card = MethodCard(**{**_CARD, "localisation": "image-aware prompts vs adapted patch tokens, no cross-attention"})
    model_kwargs: ClassVar[dict[str, Any]] = {"use_fusion": False}


class UltraADNoMultitask(UltraADMethod):
    name = "UltraAD w/o multitask"
    card = MethodCard(**{**_CARD, "image_score": "none (segmentation loss only, as the paper's '-')",
                         "classes": "none (classification loss removed)"})
    cls_weight = 0.0
    reports_image_level = False


class UltraADGenericPrompts(UltraADMethod):
    name = "UltraAD w/ US-unaware prompts"
    card = MethodCard(**{**_CARD, "classes": "generic 'a photo of a <class> object' text + few-shot memory"})
    model_kwargs: ClassVar[dict[str, Any]] = {"lesion_aware_text": False}
