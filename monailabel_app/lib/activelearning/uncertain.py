"""Next-image strategy: the unlabelled image whose class UltraAD is least sure of (highest normalised entropy).

Scores are remembered in each image's info together with the checkpoint that produced them, so a request only
scores images it has not seen with the current model, at most ``max_new`` (default 8) per request, in a seeded order
(an image never scored ranks after scored ones only when the budget is spent). After training, scores are redone.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.imageio import read_picture
from lib.infers.ultraad import UltraADInfer, normalised_entropy, predictor_for
from monai_ultraad.errors import InputDataError

logger = logging.getLogger(__name__)
INFO_KEY = "ultraad_uncertainty"


class MostUncertain(Strategy):
    """Most uncertain first (class-probability entropy of the current UltraAD model)."""

    def __init__(self, infer: UltraADInfer) -> None:
        super().__init__("Most uncertain first: UltraAD class-probability entropy")
        self.infer = infer

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        unlabeled = sorted(datastore.get_unlabeled_images())
        if not unlabeled:
            return {}
        model, info = self.infer.provider.model()
        version = info.get("checkpoint_sha256") or "untrained"
        budget = int(request.get("max_new", 8))
        predictor = predictor_for(model, info)
        order = unlabeled[:]
        random.Random(int(request.get("seed", 0))).shuffle(order)
        scores: dict[str, float] = {}
        for image_id in order:
            known = (datastore.get_image_info(image_id) or {}).get(INFO_KEY) or {}
            if known.get("model") == version:
                scores[image_id] = float(known["value"])
            elif budget > 0:
                budget -= 1
                try:
                    rgb = read_picture(datastore.get_image_uri(image_id)).rgb
                    probs = list(predictor.predict_image(rgb).class_probs.values())
                except InputDataError as exc:  # a cine loop, an undecodable series: never proposed
                    logger.info("next-image strategy skips %s: %s", image_id, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. HTTP errors of a series that cannot be converted
                    logger.info("next-image strategy skips %s: %s", image_id, getattr(exc, "detail", exc))
                    continue
                scores[image_id] = normalised_entropy(probs)
                try:
                    datastore.update_image_info(image_id, {INFO_KEY: {"model": version, "value": scores[image_id]}})
                except Exception as exc:  # noqa: BLE001 - remembering is an optimisation only
                    logger.debug("could not remember the score of %s: %s", image_id, exc)
        if not scores:
            return {}
        best = max(scores, key=lambda i: (scores[i], i))
        return {"id": best, "uncertainty": scores[best], "model": version, "scored": len(scores),
                "random_weights": bool(model.random_weights)}
