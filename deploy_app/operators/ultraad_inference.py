"""Step 4: UltraAD (the library's :class:`~monai_ultraad.inference.Predictor`) on every analysed window of every
frame, streamed: frames are decoded and scored a batch at a time; each frame's float16 heatmap
(:func:`~monai_ultraad.inference.compact_heatmap`) goes to a :class:`~monai_ultraad.heatmap_spool.HeatmapSpool` (an
unnamed file in the source's staging folder) and only its prediction record stays in memory, so memory holds neither
the loop's decoded frames nor its heatmaps."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_ultraad import engine
from monai_ultraad.constants import RANDOM_WEIGHTS_WARNING
from monai_ultraad.dicom.reader import UnsupportedDicomError
from monai_ultraad.errors import WeightsError
from monai_ultraad.heatmap_spool import HeatmapSpool
from monai_ultraad.inference import Prediction, Predictor, model_provenance
from monai_ultraad.networks.backbone import sha256_file
from monai_ultraad.quality import InputQuality, assess_frames, gate_positions, refusal_reason

from .output_folder import OutputFolder
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
    image: object  # monai_ultraad.dicom.reader.UltrasoundImage, opened for streaming (frames decoded on demand)
    predictions: list[Prediction]  # one per analysed frame; float16 heatmaps held in ``heatmaps`` (read on use)
    model: ModelInfo
    quality: InputQuality | None = None  # the input gate's flags (stated in the SR and the run report)
    heatmaps: HeatmapSpool | None = None  # where the predictions' heatmaps are; closed when the source is released

    def close(self) -> None:
        if self.heatmaps is not None:
            self.heatmaps.close()


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
        output: the run's output folder: the heatmaps are spooled in the source's staging folder there (default: the
            system's temporary folder).
        device: torch device (default: CUDA when available).
    """

    def __init__(self, fragment: Fragment, *args, model_path: Path, allow_random_init: bool = False,
                 device: str | None = None, batch_size: int = 8, refuse_flagged: bool = False,
                 output: OutputFolder | None = None, **kwargs) -> None:
        self.model_path, self.refuse_flagged, self.output = Path(model_path), refuse_flagged, output
        self.load_error: str | None = None
        self.allow_random_init, self.batch_size = allow_random_init, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.predictor: Predictor | None = None
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
        sha = sha256_file(checkpoint)
        self.predictor = Predictor(model, float(payload["threshold"]),
                                   model_provenance(model, checkpoint, payload, checkpoint_sha256=sha),
                                   batch_size=self.batch_size)
        self.info = ModelInfo(
            checkpoint_sha256=sha,
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
        if work.ok and self.predictor is None and self.load_error is None:
            try:
                self._load()
            except Exception as exc:  # noqa: BLE001 - no model: every image fails, with the reason
                logger.error("model could not be loaded: %s", exc)
                self.load_error = f"model could not be loaded: {exc}"
        if work.ok and self.load_error is not None:
            work.fail(self.load_error)
        if work.ok:
            try:
                self._score(work)
            except UnsupportedDicomError as exc:  # a frame that cannot be decoded: the reader's one line
                work.fail(exc.reason)
            except Exception as exc:  # noqa: BLE001 - one image the model cannot take must not stop the study
                work.fail(f"UltraAD failed: {type(exc).__name__}: {exc}")
        op_output.emit(work, "source")

    def _score(self, work: SourceWork) -> None:
        image = work.image
        # the input gate (colour overlays, calliper marks) on the analysed windows, from the few frames it checks
        # (decoded for it alone): stated in the SR and the run report; with --refuse-flagged a flagged image is not
        # analysed
        picks = gate_positions(len(image.frame_numbers))
        quality = assess_frames(np.stack(list(image.iter_frames(picks))), [image.frame_numbers[p] for p in picks],
                                work.windows, max_frames=len(picks))
        work.quality = quality.to_dict()
        if self.refuse_flagged and quality.flagged:
            work.refuse(refusal_reason(quality, work.name))
            return
        if self.output is not None and work.staging is None:
            work.staging = self.output.stage()
        spool = HeatmapSpool(work.staging)
        work.result = ImageResult(image, [], self.info, quality, heatmaps=spool)  # released (spool closed) in any case
        predictions, records = work.result.predictions, []
        for prediction in self.predictor.predict_frames(image.iter_frames(), image.frame_numbers, work.name,
                                                        work.windows, work.quality):
            records.append(prediction.record())  # from the float32 heatmap
            predictions.append(spool.spool(prediction.compact()))
        work.records = records
