"""Pure torch modules of UltraAD (no file I/O except the backbone's weight loading)."""

from monai_ultraad.networks.adapters import MultiLevelPatchAdapter
from monai_ultraad.networks.backbone import (
    DEFAULT_BACKBONE,
    DEFAULT_FEATURE_LAYERS,
    DEFAULT_PRETRAINED,
    RANDOM_INIT_NAMES,
    TINY_BACKBONE,
    ClipBackbone,
    FrozenTextEncoder,
    VisualFeatures,
    create_clip,
    is_random_init,
)
from monai_ultraad.networks.fusion import PatchLanguageFusion
from monai_ultraad.networks.memory import ClassTokenMiniNet, FewShotMemoryBank
from monai_ultraad.networks.prompts import LESION_AWARE_PROMPTS, ImageAwarePromptLearner, encode_class_prompts
from monai_ultraad.networks.ultraad import UltraAD, UltraADConfig, UltraADOutput

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_FEATURE_LAYERS",
    "DEFAULT_PRETRAINED",
    "LESION_AWARE_PROMPTS",
    "RANDOM_INIT_NAMES",
    "TINY_BACKBONE",
    "ClassTokenMiniNet",
    "ClipBackbone",
    "FewShotMemoryBank",
    "FrozenTextEncoder",
    "ImageAwarePromptLearner",
    "MultiLevelPatchAdapter",
    "PatchLanguageFusion",
    "UltraAD",
    "UltraADConfig",
    "UltraADOutput",
    "VisualFeatures",
    "create_clip",
    "encode_class_prompts",
    "is_random_init",
]
