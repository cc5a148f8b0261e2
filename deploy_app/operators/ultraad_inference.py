"""Step 4: UltraAD on every analysed window of every frame; heatmaps back in the full frame geometry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad import engine
from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.inference import FrameResult, predict_frames
from monai_ultraad.errors import WeightsError
from monai_ultraad.networks.backbone import sha256_file
from monai_ultraad.quality import InputQuality, assess_frames, refusal_reason

from .source_work import SourceWork

logger = logging.getLogger("ultraad.deploy")

CHECKPOINT_NAME = "model.pt"


@dataclass
class ModelInfo:
    """Provenance of the model, written into every DICOM object."""

    checkpoint_sha256: str
    backbone: str
    weights_id: str
    random_weights: bool
    threshold: float
    library_version: str


@dataclass
class ImageResult:
    image: object  # monai_ultraad.dicom.reader.UltrasoundImage
    frames: list[FrameResult]
    model: ModelInfo
    quality: InputQuality | None = None  # the input gate's flags (stated in the SR and the run report)


def resolve_model_files(model_path: Path) -> tuple[Path, Path | None]:
    """(checkpoint, backbone weights or None) from ``-m``: a checkpoint file, or a folder holding ``model.pt``
    (directly or one level down, as in a MAP's /opt/holoscan/models/<name>/) and, optionally, the backbone weight
    file named in the checkpoint (e.g. ``ViT-L-14-336px.pt``)."""
    model_path = Path(model_path)
    if model_path.is_file():
        checkpoint = model_path
    elif model_path.is_dir():
        found = sorted([*model_path.glob(CHECKPOINT_NAME), *model_path.glob(f"*/{CHECKPOINT_NAME}")])
        if not found:
            raise WeightsError(f"no {CHECKPOINT_NAME} in model folder {model_path}")
        checkpoint = found[0]
    else:
        raise WeightsError(f"model path not found: {model_path}")
    recorded = (engine.read_checkpoint(checkpoint)["model"]["backbone"].get("pretrained") or "")
    name = Path(recorded).name if recorded else ""
    for candidate in (checkpoint.parent / name, model_path / name, Path(recorded)):
        if name and candidate.is_file():
            return checkpoint, candidate
    return checkpoint, None


class UltraADInferenceOperator(Operator):
    """Loads the UltraAD checkpoint once, then scores every frame of every image.

    Args:
        model_path: ``-m`` / HOLOSCAN_MODEL_PATH (checkpoint file or folder).
        allow_random_init: accept a checkpoint trained on a random backbone (outputs are then stamped).
        refuse_flagged: do not analyse an image the input gate flags; report it as refused with the reason.
        device: torch device (default: CUDA when available).
    """

    def __init__(self, fragment: Fragment, *args, model_path: Path, allow_random_init: bool = False,
                 device: str | None = None, batch_size: int = 8, refuse_flagged: bool = False, **kwargs) -> None:
        self.model_path, self.refuse_flagged = Path(model_path), refuse_flagged
        self.load_error: str | None = None
        self.allow_random_init, self.batch_size = allow_random_init, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = None
        self.info: ModelInfo | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("source")
        spec.output("source")

    def _load(self) -> None:
        checkpoint, backbone = resolve_model_files(self.model_path)
        model, payload = engine.load_checkpoint(
            checkpoint, pretrained=str(backbone) if backbone else None,
            allow_random_init=self.allow_random_init, device=self.device,
        )
        self.model = model
        self.info = ModelInfo(
            checkpoint_sha256=sha256_file(checkpoint),
            backbone=model.backbone.model_name,
            weights_id=model.backbone.weights_id,
            random_weights=model.random_weights,
            threshold=float(payload["threshold"]),
            library_version=payload["versions"]["monai_ultraad"],
        )
        if model.random_weights:
            logger.warning(RANDOM_WEIGHTS_WARNING)

    def compute(self, op_input, op_output, context) -> None:
        work: SourceWork = op_input.receive("source")
        if work.ok and self.model is None and self.load_error is None:
            try:
                self._load()
            except Exception as exc:  # noqa: BLE001 - no model: every image fails, with the reason
                logger.error("model could not be loaded: %s", exc)
                self.load_error = f"model could not be loaded: {exc}"
        if work.ok and self.load_error is not None:
            work.fail(self.load_error)
        if work.ok:
            try:
                image = work.image
                # the input gate (colour overlays, calliper marks) on the analysed windows: stated in the SR and the
                # run report; with --refuse-flagged a flagged image is not analysed
                quality = assess_frames(image.frames, image.frame_numbers, work.windows)
                work.quality = quality.to_dict()
                if self.refuse_flagged and quality.flagged:
                    work.refuse(refusal_reason(quality, work.name))
                else:
                    frames = predict_frames(self.model, image.frames, image.frame_numbers, windows=work.windows,
                                            batch_size=self.batch_size)
                    work.result = ImageResult(image, frames, self.info, quality)
            except Exception as exc:  # noqa: BLE001 - one image the model cannot take must not stop the study
                work.fail(f"UltraAD failed: {type(exc).__name__}: {exc}")
        op_output.emit(work, "source")
