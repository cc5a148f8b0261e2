"""App settings from ``monailabel start_server --conf KEY VALUE`` and the one place the model is built.

Conf keys (all optional):

=====================  ==============================================================  ===========================
key                    meaning                                                         default
=====================  ==============================================================  ===========================
``backbone``           open_clip architecture                                          ``ViT-L-14-336``
``pretrained``         local weight file, open_clip tag, or ``random``                 ``bundle/models/ViT-L-14-336px.pt``
``allow_random_init``  accept ``pretrained random`` (every output then says RANDOM)    ``false``
``feature_layers``     tapped blocks, e.g. ``1,2,3,4`` for the tiny test backbone      UltraAD's ``6,12,18,24``
``model_dir``          where training writes ``ultraad.pt`` and infer reads it         ``<app>/model``
``init_seed``          seed of a random backbone initialisation                        ``0``
=====================  ==============================================================  ===========================

A missing weight file stops the server at start with an error naming the file and ``bundle/large_files.yml``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monai_ultraad import engine
from monai_ultraad.networks import DEFAULT_BACKBONE, DEFAULT_FEATURE_LAYERS, ClipBackbone, is_random_init
from monai_ultraad.networks.ultraad import UltraAD

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_WEIGHTS = REPO_ROOT / "bundle" / "models" / "ViT-L-14-336px.pt"
CHECKPOINT_NAME = "ultraad.pt"
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class UltraADSettings:
    """What the app runs, parsed once from the server's conf dictionary."""

    backbone: str
    pretrained: str | None
    allow_random_init: bool
    feature_layers: tuple[int, ...]
    model_dir: Path
    init_seed: int = 0

    @property
    def checkpoint(self) -> Path:
        return self.model_dir / CHECKPOINT_NAME

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | os.PathLike) -> UltraADSettings:
        layers = conf.get("feature_layers")
        pretrained = conf.get("pretrained", str(DEFAULT_WEIGHTS))
        model_dir = Path(conf.get("model_dir") or Path(app_dir) / "model").expanduser().resolve()
        return cls(
            backbone=conf.get("backbone", DEFAULT_BACKBONE),
            pretrained=None if is_random_init(pretrained) else pretrained,
            allow_random_init=str(conf.get("allow_random_init", "false")).lower() in TRUE,
            feature_layers=tuple(int(x) for x in layers.split(",")) if layers else tuple(DEFAULT_FEATURE_LAYERS),
            model_dir=model_dir,
            init_seed=int(conf.get("init_seed", 0)),
        )


class ModelProvider:
    """The frozen backbone (built once per process) and the UltraAD head, reloaded when training rewrites it.

    Before any training the head is the untrained one: UltraAD starts from CLIP's zero-shot prompts (MiniNet and
    fusion are identities at initialisation), so a radiologist sees a heatmap from the first image on; the result
    JSON says ``"trained": false`` then.
    """

    def __init__(self, settings: UltraADSettings) -> None:
        self.settings = settings
        # Loud and early: a missing weight file or random weights without allow_random_init fail here, at server
        # start, with monai_ultraad's message naming the file and bundle/large_files.yml.
        self.backbone = ClipBackbone(
            settings.backbone,
            settings.pretrained,
            settings.feature_layers,
            allow_random_init=settings.allow_random_init,
            init_seed=settings.init_seed,
        )
        self._lock = threading.Lock()
        self._cached: tuple[float | None, UltraAD, dict[str, Any]] | None = None

    def model(self) -> tuple[UltraAD, dict[str, Any]]:
        """The current model (eval mode) and what produced it (checkpoint hash, threshold, shots...)."""
        path = self.settings.checkpoint
        stamp = path.stat().st_mtime if path.is_file() else None
        with self._lock:
            if self._cached is None or self._cached[0] != stamp:
                self._cached = (stamp, *self._load(path if stamp is not None else None))
            return self._cached[1], self._cached[2]

    def _load(self, path: Path | None) -> tuple[UltraAD, dict[str, Any]]:
        model = engine.build_model(self.backbone, seed=0)
        info: dict[str, Any] = {"trained": False, "threshold": 0.5, "checkpoint": None}
        if path is not None:
            data = path.read_bytes()
            payload = engine.read_checkpoint(path)  # torch.load(weights_only=True), clear errors
            engine.load_head(model, payload, source=path.name)  # refuses another backbone / other weights
            split = payload.get("split") or {}
            info = {
                "trained": True,
                "threshold": float(payload["threshold"]),
                "checkpoint": path.name,
                "checkpoint_sha256": hashlib.sha256(data).hexdigest()[:16],
                "created_utc": payload.get("created_utc"),
                "shots": len(split.get("shots", [])),
            }
            logger.info("loaded UltraAD head %s (sha256 %s)", path.name, info["checkpoint_sha256"])
        return model.eval(), info


def torch_threads() -> None:
    """Keep torch to the cores it is given (the server shares a small machine with the training subprocess)."""
    n = int(os.environ.get("ULTRAAD_TORCH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
