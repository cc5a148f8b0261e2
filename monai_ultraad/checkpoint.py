"""UltraAD checkpoints: the head weights with full provenance, written atomically and read with ``weights_only``.

A checkpoint records the model config (:class:`~monai_ultraad.networks.UltraADConfig`), the backbone and its
weights id, the training hyperparameters, the few-shot split, the best epoch, the validation threshold and
calibration, and the library versions. It is read back with ``torch.load(weights_only=True)`` (no pickled code runs),
and a head is only ever loaded into the backbone architecture and weights it was trained on. Checkpoints written
before the memory centring / calibration load with those parts neutral (see ``UltraAD.load_head_state_dict``).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import monai_ultraad
from monai_ultraad.errors import InputDataError, WeightsError
from monai_ultraad.io_utils import atomic_write_bytes, to_jsonable
from monai_ultraad.networks.backbone import ClipBackbone
from monai_ultraad.networks.ultraad import UltraAD, UltraADConfig

if TYPE_CHECKING:
    from monai_ultraad.engine import FitResult, TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "monai_ultraad.checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike,
    model: UltraAD,
    *,
    threshold: float,
    train_config: TrainConfig | None = None,
    split: dict[str, Any] | None = None,
    fit_result: FitResult | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the head weights and full provenance atomically (temporary file, then rename)."""
    import open_clip

    payload = {
        "format": CHECKPOINT_FORMAT,
        "head_state": model.head_state_dict(),
        "model": model.describe(),
        "threshold": float(threshold),
        "train_config": asdict(train_config) if train_config else None,
        "split": split,
        "best_epoch": fit_result.best_epoch if fit_result else None,
        "val_metrics": to_jsonable(fit_result.val_metrics) if fit_result else None,  # plain types: weights_only load
        "calibration": to_jsonable(fit_result.calibration) if fit_result else None,
        "random_weights": model.random_weights,
        "versions": {
            "monai_ultraad": monai_ultraad.__version__,
            "torch": str(torch.__version__),
            "open_clip": str(open_clip.__version__),
            "python": platform.python_version(),
        },
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": to_jsonable(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); clear errors for missing/corrupt/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read checkpoint {path}: not a valid monai_ultraad checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a monai_ultraad checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    *,
    backbone: ClipBackbone | None = None,
    pretrained: str | None = None,
    allow_random_init: bool = False,
    device: str | torch.device = "cpu",
    backbone_name: str | None = None,
) -> tuple[UltraAD, dict[str, Any]]:
    """Rebuild the trained UltraAD from a checkpoint.

    Args:
        backbone: reuse an already loaded backbone; it must be the same architecture and weights as in training.
        pretrained: where to load the backbone weights from when ``backbone`` is None (default: what training used;
            a local file must hold the same weights).
        allow_random_init: needed to load a checkpoint that was trained on a random-init backbone.
        backbone_name: the architecture the caller expects; another one recorded in the checkpoint is an error.

    Raises:
        WeightsError: unreadable checkpoint, or a backbone other than the one it was trained on.
    """
    payload = read_checkpoint(path)
    config = model_config(payload, source=Path(path).name)
    trained_backbone = payload["model"]["backbone"]
    if backbone_name is not None and backbone_name != config.backbone:
        raise WeightsError(
            f"checkpoint {Path(path).name} was trained on backbone {config.backbone}, not {backbone_name}; "
            "it cannot be loaded into another backbone"
        )
    if backbone is None:
        source = pretrained if pretrained is not None else trained_backbone.get("pretrained")
        if trained_backbone.get("random_weights") and pretrained is None:
            if not allow_random_init:
                raise WeightsError(
                    f"checkpoint {Path(path).name} was trained on a randomly initialised backbone; loading it needs "
                    "allow_random_init=True (and its outputs are not meaningful)"
                )
            source = None
        config = replace(config, pretrained=source)
    model = UltraAD(backbone, config, allow_random_init=allow_random_init)
    load_head(model, payload, source=Path(path).name)
    model.to(device).eval()
    return model, payload


def model_config(checkpoint: dict[str, Any], source: str = "checkpoint") -> UltraADConfig:
    """The :class:`UltraADConfig` a checkpoint was trained with (the one definition the network is rebuilt from)."""
    try:
        return UltraADConfig.from_dict(checkpoint["model"]["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"checkpoint {source} holds no usable UltraAD model config ({exc})") from exc


def network_from_checkpoint(
    checkpoint: str | os.PathLike,
    pretrained: str | None = None,
    allow_random_init: bool = False,
    backbone_name: str | None = None,
    device: str | torch.device = "cpu",
) -> UltraAD:
    """:func:`load_checkpoint` returning only the network (for configs: ``network_def``)."""
    return load_checkpoint(checkpoint, pretrained=pretrained, allow_random_init=allow_random_init,
                           backbone_name=backbone_name, device=device)[0]


def with_checkpoint(model: UltraAD, checkpoint: dict[str, Any] | str | os.PathLike) -> UltraAD:
    """Load a checkpoint's head into ``model`` (see :func:`load_head`) and return the model in eval mode."""
    load_head(model, checkpoint)
    return model.eval()


def recorded_test_items(checkpoint: dict[str, Any], items: Sequence[dict], split: str = "auto") -> list[dict]:
    """The images to evaluate a checkpoint on.

    ``test``: the test images recorded in the checkpoint; ``all``: every item; ``auto``: the recorded test images
    when ``items`` contains any of the checkpoint's shots or validation images (the training dataset), otherwise
    every item (an unseen dataset). Never returns an image the model was trained or selected on.
    """
    recorded = checkpoint.get("split") or {}
    used = set(recorded.get("shots", [])) | set(recorded.get("validation", []))
    if split not in ("auto", "test", "all"):
        raise InputDataError(f"split must be auto, test or all, not {split!r}")
    if split == "test" or (split == "auto" and any(str(it["id"]) in used for it in items)):
        test_ids = set(recorded.get("test", []))
        chosen = [it for it in items if str(it["id"]) in test_ids]
        if not chosen:
            raise InputDataError("none of the checkpoint's recorded test images are in this dataset")
        return chosen
    if split == "all" and any(str(it["id"]) in used for it in items):
        logger.warning("evaluating on every image, including images the model was trained or selected on")
    return list(items)


def load_head(model: UltraAD, checkpoint: dict[str, Any] | str | os.PathLike, source: str | None = None) -> dict:
    """Load a checkpoint's trained head into ``model`` after checking it was trained on the same backbone.

    Raises:
        WeightsError: another backbone architecture, other tapped layers, other backbone weights, or another head
            configuration.
    """
    payload = read_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    source = source or (Path(checkpoint).name if not isinstance(checkpoint, dict) else "checkpoint")
    cfg = payload["model"]["config"]
    trained = payload["model"]["backbone"]
    backbone = model.backbone
    if backbone.model_name != cfg["backbone"] or list(backbone.feature_layers) != list(cfg["feature_layers"]):
        raise WeightsError(
            f"checkpoint {source} was trained on backbone {cfg['backbone']} (layers {cfg['feature_layers']}), "
            f"not {backbone.model_name} (layers {list(backbone.feature_layers)}); it cannot be loaded into another backbone"
        )
    if backbone.weights_id != trained.get("weights_id"):
        raise WeightsError(
            f"checkpoint {source} was trained with backbone weights {trained.get('weights_id')}, "
            f"but the loaded backbone has {backbone.weights_id}; the head only fits the weights it was trained on"
        )
    model.load_head_state_dict(payload["head_state"])
    return payload


__all__ = [
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "load_head",
    "model_config",
    "network_from_checkpoint",
    "read_checkpoint",
    "recorded_test_items",
    "save_checkpoint",
    "with_checkpoint",
]
