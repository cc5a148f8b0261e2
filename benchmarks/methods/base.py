"""What every benchmarked method implements, and what it is given.

All methods run on the same cached frozen-backbone features (:class:`~monai_ultraad.networks.VisualFeatures`), so a
benchmark compares heads, not backbones, and pays for the image tower once per image. A method receives a
:class:`FitData` (its shots, and validation data for its own hyperparameter choices) and turns a batch of features
into a :class:`Prediction`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from monai_ultraad.engine import EvalSample
from monai_ultraad.features import FeatureStore
from monai_ultraad.networks import ClipBackbone, VisualFeatures


@dataclass
class FitData:
    """Everything a method may learn from: the k-shot training images and the validation images.

    Attributes:
        shots: features of the shots.
        labels: (N,) class indices of the shots.
        masks: (N, 1, S, S) lesion masks at the model input resolution (all zero for normal images).
        val_features: features of the validation images (for hyperparameters, epochs and thresholds only).
        val_labels: (V,) their class indices.
        shot_items, val_items: the dataset items (UltraAD's own training loop reads them through ``store``).
        val_batches: (features, ground truth) batches of the validation images, as :func:`engine.fit` uses.
        store: the shared feature cache.
        seed: seed of everything stochastic in the method.
    """

    shots: VisualFeatures
    labels: torch.Tensor
    masks: torch.Tensor
    val_features: VisualFeatures
    val_labels: torch.Tensor
    shot_items: list[dict]
    val_items: list[dict]
    val_batches: list[tuple[VisualFeatures, list[EvalSample]]]
    store: FeatureStore
    seed: int


@dataclass
class Prediction:
    """A method's output for a batch.

    Attributes:
        anomaly_score: (B,) image anomaly score (higher = more likely abnormal); None when the method gives none.
        class_probs: (B, C) probabilities over the class names; None for binary (normal / abnormal) methods.
        anomaly_map: (B, 1, S, S) lesion probability at the model input resolution; None for classifiers.
    """

    anomaly_score: torch.Tensor | None
    class_probs: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None


@dataclass
class MethodCard:
    """How a method forms its outputs: recorded next to its numbers so that tables are read correctly."""

    family: str
    image_score: str
    localisation: str
    smoothing: str
    classes: str
    reference: str
    notes: list[str] = field(default_factory=list)


class Method:
    """A few-shot (or zero-shot) method on cached CLIP features.

    Subclasses set :attr:`name` and :attr:`card` and implement :meth:`fit` and :meth:`predict`.
    ``fit`` returns a dict of what it chose (hyperparameters, epochs), recorded in the results.
    """

    name: ClassVar[str] = ""
    card: ClassVar[MethodCard]

    def __init__(self, backbone: ClipBackbone, class_names: tuple[str, ...], **options: Any) -> None:
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.options = options

    def fit(self, data: FitData) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError
