"""The bundle's `training` and `ultraad fewshot` (engine.fit) are one training: the same seed gives the same checkpoint.

Both build the head from the same seed, see the shots in the same order, select the epoch, calibrate and choose the
threshold with the same code (monai_ultraad.selection, engine.finish_fit) and save with checkpoint.save_checkpoint.
Synthetic images (tests/conftest.py), so this runs without the shared data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
COMMON = {"shots": 2, "epochs": 3, "max_val_per_class": 4}


def test_bundle_training_and_the_cli_give_the_same_checkpoint(synthetic_dataset, tmp_path):
    from monai_ultraad.checkpoint import read_checkpoint
    from monai_ultraad.cli import main

    data = synthetic_dataset
    cache = tmp_path / "cache"
    bundle_root = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
         str(REPO / "bundle" / "configs" / "train.json"), "--bundle_root", str(bundle_root), "--dataset_dir", str(data),
         "--cache_dir", str(cache), "--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random",
         "--allow_random_init", "True", "--feature_layers", "[1,2,3,4]",
         *[a for k, v in COMMON.items() for a in (f"--{k}", str(v))]],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    main(["fewshot", "--data_dir", str(data), "--seeds", "0", "--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random",
          "--allow_random_init", "--feature_layers", "1,2,3,4", "--output_dir", str(tmp_path / "cli"),
          "--cache_dir", str(cache), "--progress", "False", *[a for k, v in COMMON.items() for a in (f"--{k}", str(v))]])

    from_bundle = read_checkpoint(bundle_root / "models" / "model.pt")
    from_cli = read_checkpoint(tmp_path / "cli" / "seed0" / "model.pt")
    assert from_bundle["split"] == from_cli["split"]
    assert from_bundle["model"]["config"] == from_cli["model"]["config"]
    assert sorted(from_bundle["head_state"]) == sorted(from_cli["head_state"])
    for key, tensor in from_cli["head_state"].items():
        assert torch.equal(from_bundle["head_state"][key], tensor), key
    assert from_bundle["best_epoch"] == from_cli["best_epoch"]
    assert from_bundle["threshold"] == from_cli["threshold"]
    assert from_bundle["calibration"] == from_cli["calibration"] and from_cli["calibration"]["temperature"] != 1.0
    # the head did train: it is not its initialisation
    from monai_ultraad.networks import TINY_BACKBONE, ClipBackbone, UltraAD

    initial = UltraAD(ClipBackbone(TINY_BACKBONE, None, (1, 2, 3, 4), allow_random_init=True), seed=0)
    assert not torch.equal(initial.head_state_dict()["prompt_learner.ctx"], from_cli["head_state"]["prompt_learner.ctx"])
