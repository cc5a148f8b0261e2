"""UltraAD (Zhou et al., 2025): few-shot CLIP adaptation for ultrasound lesion localisation and classification.

The model composes, on a frozen open_clip backbone:

1. :class:`ClassTokenMiniNet` -- the shared, refined class token f (Sec. 2.4);
2. :class:`ImageAwarePromptLearner` -- normal/abnormal prompts with learnable context + an instance token from f
   (Sec. 2.1);
3. :class:`MultiLevelPatchAdapter` -- linear adapters on the patch tokens of several blocks (Sec. 2.1);
4. :class:`FewShotMemoryBank` -- class logits from frozen lesion-aware text embeddings and a refined few-shot image
   memory (Sec. 2.2);
5. :class:`PatchLanguageFusion` -- prototypes (image-aware prompt + lesion-aware class text) refined by M-head
   cross-attention over the patches, then compared with every patch (Sec. 2.3);
6. a mask-guided image anomaly score: mean of the abnormal class probability and the map's maximum (Sec. 3.2).

The head works on :class:`VisualFeatures`, so training and evaluation can run from a feature cache; ``forward``
on images is the same computation with the backbone in front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from monai_ultraad.calibration import LogitCalibration
from monai_ultraad.constants import CLASS_NAMES, NORMAL_INDEX
from monai_ultraad.errors import WeightsError
from monai_ultraad.networks.adapters import MultiLevelPatchAdapter
from monai_ultraad.networks.backbone import (
    DEFAULT_BACKBONE,
    DEFAULT_FEATURE_LAYERS,
    DEFAULT_PRETRAINED,
    ClipBackbone,
    VisualFeatures,
)
from monai_ultraad.networks.fusion import PatchLanguageFusion
from monai_ultraad.networks.memory import ClassTokenMiniNet, FewShotMemoryBank
from monai_ultraad.networks.prompts import (
    GENERIC_CLASS_PROMPTS,
    LESION_AWARE_PROMPTS,
    ImageAwarePromptLearner,
    encode_class_prompts,
)

#: head entries added after the first checkpoints were written (see UltraAD.load_head_state_dict)
_ADDED_HEAD_KEYS = ("memory.center", "memory.log_term_weights", "memory.class_bias", "calibration.temperature",
                    "calibration.bias")


def _autocasts_to(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether autocast is on for ``device`` and computes in ``dtype``."""
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == dtype


@dataclass
class UltraADOutput:
    """What UltraAD returns for a batch.

    Attributes:
        anomaly_map: (B, 1, S, S) lesion probability per pixel in [0, 1] at the input resolution S.
        class_logits: (B, C) logits over :data:`CLASS_NAMES`.
        anomaly_score: (B,) image anomaly score in [0, 1] (mask-guided: mean of P(abnormal) and max of the map).
        layer_logits: (B, L, 2, g, g) normal/abnormal patch logits per tapped layer (the segmentation loss input).
    """

    anomaly_map: torch.Tensor
    class_logits: torch.Tensor
    anomaly_score: torch.Tensor
    layer_logits: torch.Tensor

    @property
    def class_probs(self) -> torch.Tensor:
        return self.class_logits.softmax(dim=-1)


@dataclass
class UltraADConfig:
    """The one definition of UltraAD's hyperparameters and their defaults.

    :class:`UltraAD` is built from it (its keyword arguments are these fields), checkpoints store
    :meth:`to_dict` and rebuild the model with :meth:`from_dict`, and the bundle's ``network_def`` takes these
    defaults (override one with e.g. ``--network_def#n_ctx 8``).

    Attributes:
        backbone, pretrained, feature_layers, init_seed: the frozen backbone (see :class:`ClipBackbone`).
        class_names: image classes; index 0 must be the normal class.
        n_ctx: learnable context tokens of the image-aware prompts.
        fusion_heads: M of the cross-attention (a model records the divisor of the embedding width it used).
        memory_alpha, memory_beta: weight and sharpness of the memory term.
        map_temperature: scale of patch-prototype cosine similarities before the softmax (CLIP's 100).
        image_aware_prompts, lesion_aware_text, use_memory, use_fusion: False switches a part off (paper ablations).
    """

    backbone: str = DEFAULT_BACKBONE
    pretrained: str | None = DEFAULT_PRETRAINED
    feature_layers: Sequence[int] | None = DEFAULT_FEATURE_LAYERS
    class_names: Sequence[str] = CLASS_NAMES
    n_ctx: int = 4
    fusion_heads: int = 8
    memory_alpha: float = 10.0
    memory_beta: float = 5.5
    map_temperature: float = 100.0
    image_aware_prompts: bool = True
    lesion_aware_text: bool = True
    use_memory: bool = True
    use_fusion: bool = True
    init_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["feature_layers"] = None if self.feature_layers is None else list(self.feature_layers)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UltraADConfig:
        """The config :meth:`to_dict` wrote (missing fields: their defaults, as in checkpoints older than them).

        Raises:
            ValueError: a field this version does not know (a checkpoint of a newer version?).
        """
        values = {k: v for k, v in values.items() if k not in _RETIRED_FIELDS}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown UltraAD config fields {unknown}")
        return cls(**values)


#: config fields that earlier versions wrote and that never had an effect (``extra`` was always empty)
_RETIRED_FIELDS = ("extra",)


class UltraAD(nn.Module):
    """UltraAD on a frozen open_clip backbone.

    Args:
        backbone: an existing :class:`ClipBackbone` (shared between models), or None to build one from the config's
            ``backbone``, ``pretrained``, ``feature_layers`` and ``init_seed``.
        config: the hyperparameters (default: :class:`UltraADConfig`'s defaults).
        seed: when given, the head's learnable parameters are initialised from it (the global RNG is left as it
            was); None uses the global RNG.
        allow_random_init, cache_dir: for building the backbone (see :class:`ClipBackbone`).
        **overrides: fields of :class:`UltraADConfig` replacing those of ``config`` (e.g. ``use_memory=False``).

    Example::

        model = UltraAD(config=UltraADConfig(backbone="ViT-L-14-336", pretrained="/models/ViT-L-14-336.pt"))
        model.setup_memory(support_features, support_labels)
        out = model(images)  # UltraADOutput
    """

    def __init__(
        self,
        backbone: ClipBackbone | None = None,
        config: UltraADConfig | None = None,
        *,
        seed: int | None = None,
        allow_random_init: bool = False,
        cache_dir: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = config or UltraADConfig()
        try:
            config = replace(config, **overrides)
        except TypeError as exc:
            raise TypeError(f"UltraAD: {exc} (its keyword arguments are the fields of UltraADConfig)") from None
        if backbone is None:
            backbone = ClipBackbone(
                config.backbone,
                config.pretrained,
                config.feature_layers,
                allow_random_init=allow_random_init,
                init_seed=config.init_seed,
                cache_dir=cache_dir,
            )
        class_names = tuple(config.class_names)
        if class_names[NORMAL_INDEX] != "normal" or len(class_names) < 2:
            raise ValueError(f"class_names must start with 'normal' and have at least 2 classes, got {class_names}")
        self.backbone = backbone
        self.class_names = class_names
        dim = backbone.embed_dim
        heads = config.fusion_heads
        while dim % heads:  # small test backbones: fall back to a divisor of D
            heads -= 1
        # what this model is: the backbone it runs on, and the heads it uses (rebuilding from it gives this model)
        self.config = replace(config, backbone=backbone.model_name, pretrained=backbone.pretrained,
                              feature_layers=backbone.feature_layers, init_seed=backbone.init_seed,
                              class_names=class_names, fusion_heads=heads)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self._build_head(config, dim, heads)

    def _build_head(self, config: UltraADConfig, dim: int, heads: int) -> None:
        backbone = self.backbone
        self.mininet = ClassTokenMiniNet(dim)
        self.prompt_learner = ImageAwarePromptLearner(backbone.text, dim, n_ctx=config.n_ctx, image_aware=config.image_aware_prompts)
        self.adapter = MultiLevelPatchAdapter(len(backbone.feature_layers), backbone.vision_width, dim)
        prompts = LESION_AWARE_PROMPTS if config.lesion_aware_text else GENERIC_CLASS_PROMPTS
        class_text = encode_class_prompts(backbone.text, prompts, self.class_names)
        self.memory = FewShotMemoryBank(class_text, alpha=config.memory_alpha, beta=config.memory_beta,
                                        use_memory=config.use_memory)
        self.fusion = PatchLanguageFusion(dim, heads) if config.use_fusion else None
        self.map_temperature = config.map_temperature
        # temperature + class bias fitted on validation images after training (identity before)
        self.calibration = LogitCalibration(len(self.class_names))

    # ------------------------------------------------------------------ provenance
    @property
    def random_weights(self) -> bool:
        return self.backbone.random_weights

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    def describe(self) -> dict[str, Any]:
        """Config + backbone provenance, stored in checkpoints and every output."""
        return {"config": self.config.to_dict(), "backbone": self.backbone.description, "memory_size": self.memory.size}

    # ------------------------------------------------------------------ setup / state
    @torch.no_grad()
    def setup_memory(self, features: VisualFeatures, labels: torch.Tensor) -> None:
        """Store the few-shot images' class tokens (and labels) in the memory bank."""
        self.memory.setup(F.normalize(features.cls_token.float(), dim=-1), labels)
        self.calibration.reset()  # a new memory: an earlier validation calibration no longer applies

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained part only: everything except the frozen backbone (which is loaded from its weights)."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_head_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load :meth:`head_state_dict` output; the memory is resized to the saved number of shots."""
        if "memory.keys" not in state:
            raise WeightsError("checkpoint has no UltraAD head weights (memory.keys missing)")
        self.memory.resize_(state["memory.keys"].shape[0])
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        # checkpoints from before the memory centring, term weights and calibration: their neutral values give the
        # earlier formula exactly (centre 0, weights exp(0) = 1, biases 0, temperature 1)
        state = {**{k: torch.ones_like(own[k]) if k == "calibration.temperature" else torch.zeros_like(own[k])
                    for k in _ADDED_HEAD_KEYS if k in own and k not in state}, **state}
        unexpected = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        if unexpected or missing or mismatched:
            raise WeightsError(
                "checkpoint does not fit this UltraAD model (another backbone or configuration?): "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatch {mismatched[:4]}"
            )
        self.load_state_dict({**{f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}, **state})

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor | VisualFeatures, memory_exclude: torch.Tensor | None = None
    ) -> UltraADOutput:
        """(B, 3, S, S) CLIP-normalised images, or already computed :class:`VisualFeatures` -> :class:`UltraADOutput`.

        Accepting features here (not only in :meth:`forward_features`) lets wrappers such as DistributedDataParallel,
        which only intercept ``forward``, train the head on cached features.
        """
        if isinstance(images, VisualFeatures):
            return self.forward_features(images, memory_exclude=memory_exclude)
        return self.forward_features(self.backbone.encode_image(images), memory_exclude=memory_exclude)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head's learnable parameters (the backbone is frozen)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]

    def forward_features(self, features: VisualFeatures, memory_exclude: torch.Tensor | None = None) -> UltraADOutput:
        """Run the head on (possibly cached) backbone features.

        Args:
            features: class and patch tokens from :meth:`ClipBackbone.encode_image`.
            memory_exclude: (B,) memory slot of each sample or -1; used in training (leave-one-out memory).
        """
        device = self.memory.class_text.device
        cls_token = features.cls_token.to(device).float()
        patches = features.patch_tokens.to(device)
        if patches.dtype != torch.float32 and not _autocasts_to(patches.dtype, device):
            patches = patches.float()  # the cache holds float16; bfloat16 tokens stay as they are under bf16 autocast
        batch = patches.shape[0]
        grid = self.backbone.grid_size
        if not torch.jit.is_tracing() and patches.shape[2] != grid * grid:
            raise ValueError(f"expected {grid * grid} patch tokens ({grid}x{grid} grid), got {patches.shape[2]}")

        shared = self.mininet(cls_token)  # (B, D), shared by classification and prompting
        class_logits = self.calibration(self.memory(shared, exclude=memory_exclude))

        state_text = self.prompt_learner(shared)  # (B, 2, D): image-aware normal / abnormal prompts
        class_text = self.memory.class_text
        abnormal_text = F.normalize(class_text[1:].mean(dim=0), dim=-1)
        prototypes = F.normalize(
            state_text + torch.stack([class_text[NORMAL_INDEX], abnormal_text]).unsqueeze(0), dim=-1
        )
        layer_logits = []
        for tokens in self.adapter(patches):  # per layer: (B, N, D)
            protos = self.fusion(prototypes, tokens) if self.fusion is not None else prototypes
            logits = self.map_temperature * protos @ tokens.transpose(1, 2)  # (B, 2, N)
            layer_logits.append(logits.reshape(batch, 2, grid, grid))
        layer_logits_t = torch.stack(layer_logits, dim=1)  # (B, L, 2, g, g)
        patch_prob = layer_logits_t.softmax(dim=2)[:, :, 1].mean(dim=1, keepdim=True)  # (B, 1, g, g)
        size = self.backbone.image_size
        anomaly_map = F.interpolate(patch_prob, size=(size, size), mode="bilinear", align_corners=False)
        anomaly_map = anomaly_map.clamp(0.0, 1.0)
        p_abnormal = 1.0 - class_logits.softmax(dim=-1)[:, NORMAL_INDEX]
        anomaly_score = 0.5 * (p_abnormal + anomaly_map.flatten(1).amax(dim=1))
        return UltraADOutput(anomaly_map, class_logits, anomaly_score, layer_logits_t)
