"""Run the MONAI Label app's training task (``monailabel_app/lib/trainers/ultraad.py``) on labelled images, as the
server does after the labels were submitted; used by the known-answer test.

``python tests/known_answer/monailabel_train.py <labels.json> <model_dir>``: labels.json lists
``{"id", "image", "label", "class"}`` (image file, label PNG with 0 / 1 benign / 2 malignant, class name). Runs
with the MONAI Label environment's interpreter when there is one (its pinned MONAI Label 0.8.5), otherwise with
any interpreter that can import ``monailabel``. Prints the trainer's stats as JSON on the last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class LabelledFolder:
    """The part of MONAI Label's Datastore interface that the training task reads (final labels only)."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = {e["id"]: e for e in entries}

    def name(self) -> str:
        return "known-answer"

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        return sorted(self.entries)

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return image_id

    def get_label_info(self, label_id: str, tag: str) -> dict:
        return {"class": self.entries[label_id]["class"]}

    def get_image_uri(self, image_id: str) -> str:
        return self.entries[image_id]["image"]

    def get_label_uri(self, label_id: str, tag: str, image_id: str = "") -> str:
        return self.entries[label_id]["label"]


def main(labels_json: str, model_dir: str) -> dict:
    sys.path.insert(0, str(REPO / "monailabel_app"))
    from lib.configs.ultraad import ModelProvider, UltraADSettings
    from lib.trainers.ultraad import UltraADTrain

    conf = {"backbone": "UltraAD-Tiny-ViT", "pretrained": "random", "allow_random_init": "true",
            "feature_layers": "1,2,3,4", "model_dir": model_dir}
    provider = ModelProvider(UltraADSettings.from_conf(conf, REPO / "monailabel_app"))
    task = UltraADTrain(provider)
    return task({}, LabelledFolder(json.loads(Path(labels_json).read_text())))  # the task's own defaults


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    print(json.dumps(main(sys.argv[1], sys.argv[2]), default=str))
