"""UltraAD MONAI Label app: breast-ultrasound lesion heatmaps and normal/benign/malignant classes in 3D Slicer,
few-shot retraining from the radiologist's labels.

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies <image folder | DICOMweb URL> \
        [--conf backbone UltraAD-Tiny-ViT --conf pretrained random --conf allow_random_init true \
         --conf feature_layers 1,2,3,4 --conf model_dir /some/folder]

Models: infer ``ultraad``, train ``ultraad``, strategies ``most_uncertain`` and ``random``. Conf keys: see
lib/configs/ultraad.py; ``dicomweb_modality`` (default US) filters the PACS series, ``dicomweb_timeout`` (seconds,
default 30) bounds every PACS request. Errors reach the client as HTTP 4xx/502/503 with a message (lib/errors.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests
from fastapi import HTTPException
from lib.activelearning import MostUncertain
from lib.configs import ModelProvider, UltraADSettings
from lib.configs.ultraad import torch_threads
from lib.datastore import UltrasoundDICOMwebDatastore, UltrasoundLocalDatastore, timeout_session
from lib.datastore.local import IMAGE_PATTERNS
from lib.errors import NOT_FOUND, PACS_UNAVAILABLE, UNPROCESSABLE, http_error
from lib.imageio import LABELS
from lib.infers import UltraADInfer
from lib.trainers import UltraADTrain
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

import monai_ultraad
from monai_ultraad.errors import UltraADError

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """MONAI Label app around monai_ultraad (model, training and checkpoints all come from the core package)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        torch_threads()
        self.ultraad_settings = UltraADSettings.from_conf(conf or {}, app_dir)
        self.provider = ModelProvider(self.ultraad_settings)  # fails here, loudly, without usable weights
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UltraAD",
            description="Few-shot CLIP (UltraAD): breast-ultrasound lesion heatmap and normal/benign/malignant class",
            version=monai_ultraad.__version__,
            labels=dict(LABELS),
        )

    # ------------------------------------------------------------------------------------------ datastores
    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            return self.init_remote_datastore()
        return UltrasoundLocalDatastore(
            self.studies,
            extensions=IMAGE_PATTERNS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_remote_datastore(self):
        # Not MONAI Label's own: that one downloads dcmqi from the internet at start and keeps labels only in the PACS.
        timeout = float(self.conf.get("dicomweb_timeout", 30))
        client = DICOMwebClientX(
            url=self.studies,
            session=timeout_session(timeout),
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache = (self.conf.get("dicomweb_cache") or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return UltrasoundDICOMwebDatastore(
            client=client,
            search_filter={"Modality": self.conf.get("dicomweb_modality", "US")},
            cache_path=cache or None,
            fetch_by_frame=False,
            convert_to_nifti=True,
        )

    # ------------------------------------------------------------------------------------------ tasks
    def init_infers(self):
        return {"ultraad": UltraADInfer(self.provider)}

    def init_trainers(self):
        return {"ultraad": UltraADTrain(self.provider)}

    def init_strategies(self):
        return {"most_uncertain": MostUncertain(self._infers["ultraad"]), "random": Random()}

    def init_scoring_methods(self):
        return {}

    def infer(self, request: dict[str, Any], datastore=None):
        """MONAI Label's infer, with an unknown image a 404 and an unusable one a 422 instead of a bare 500."""
        ds = datastore or self.datastore()
        image = request.get("image")
        try:
            if isinstance(image, str) and not os.path.exists(image) and image not in ds.list_images():
                raise http_error(NOT_FOUND, f"image {image!r} is not in the datastore")
            result = super().infer(request, datastore)
        except HTTPException:
            raise
        except UltraADError as exc:  # InputDataError (unreadable image, cine loop), WeightsError
            raise http_error(UNPROCESSABLE, str(exc)) from None
        except requests.RequestException as exc:
            raise http_error(PACS_UNAVAILABLE, f"PACS not reachable ({type(exc).__name__})") from None
        return result

    def train(self, request):
        try:
            return super().train(request)
        except UltraADError as exc:
            logger.error("training not possible: %s", exc)
            raise
