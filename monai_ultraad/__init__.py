"""monai_ultraad: UltraAD few-shot CLIP adaptation for breast-ultrasound lesion localisation and classification."""

from __future__ import annotations

__version__ = "0.1.0"

from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING

__all__ = ["CLASS_NAMES", "RANDOM_WEIGHTS_WARNING", "__version__"]
