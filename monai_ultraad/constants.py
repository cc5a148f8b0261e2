"""Project-wide names that every surface (CLI, bundle, deploy app, MONAI Label app) agrees on."""

from __future__ import annotations

#: Image classes in the order of the model's class logits. Index 0 is "no anomaly".
CLASS_NAMES: tuple[str, ...] = ("normal", "benign", "malignant")
NORMAL_INDEX = 0

#: Keys of the item dictionaries that flow from the readers through the transforms.
IMAGE_KEY = "image"
MASK_KEY = "mask"
LABEL_KEY = "label"  # int index into CLASS_NAMES
PATIENT_KEY = "patient"
ID_KEY = "id"

#: File suffixes read as 2D images (PNG, JPEG, BMP, TIFF) wherever a folder of images is listed.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Environment variable that points at the folder holding bus_uclm/, bus_bra/ and dicom/.
DATA_DIR_ENV = "ULTRAAD_DATA_DIR"

#: Printed into every log, JSON and DICOM output produced without real pretrained weights.
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: the CLIP backbone was randomly initialised, not loaded from pretrained weights; "
    "outputs are not meaningful and must not be used clinically"
)

#: The CLIP backbone of the paper (open_clip name), its pretrained tag and the blocks whose patch tokens are adapted
#: (paper default for ViT-L, 24 blocks; 1-based block numbers).
DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_PRETRAINED = "openai"
DEFAULT_FEATURE_LAYERS: tuple[int, ...] = (6, 12, 18, 24)
