"""The known-answer test through each surface at its own defaults: CLI, MONAI bundle, MONAI Label trainer.

Same synthetic set, same floors as tests/known_answer/test_known_answer.py; a surface whose defaults, plumbing
or checkpoint break the learning path fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.known_answer.harness import PER_CLASS, SHOTS
from tests.known_answer.synthetic import make_dataset
from tests.known_answer.test_known_answer import FLOORS, below

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("known_answer_data"), per_class=PER_CLASS, seed=0)


def test_cli_fewshot_then_evaluate(dataset, tmp_path):
    import torch

    from monai_ultraad.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out, cache = tmp_path / "run", tmp_path / "cache"
        main(["fewshot", "--data_dir", str(dataset), "--shots", str(SHOTS), "--seeds", "0", "--backbone",
              "UltraAD-Tiny-ViT", "--pretrained", "random", "--allow_random_init", "--feature_layers", "1,2,3,4",
              "--output_dir", str(out), "--cache_dir", str(cache), "--progress", "False"])
        trained = json.loads((out / "seed0" / "metrics.json").read_text())["test"]
        main(["evaluate", "--checkpoint", str(out / "seed0" / "model.pt"), "--data_dir", str(dataset),
              "--allow_random_init", "--output_dir", str(tmp_path / "eval"), "--cache_dir", str(cache),
              "--progress", "False"])
    finally:
        torch.set_num_threads(before)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert not below(trained, FLOORS), below(trained, FLOORS)
    assert not below(evaluated, FLOORS), below(evaluated, FLOORS)  # the checkpoint alone gives the same answer
    for key in FLOORS:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6)


def test_bundle_training_then_evaluating(dataset, tmp_path):
    """``run training`` then ``run evaluating`` (in this process, through ``monai.bundle.run``: the same parser,
    configs and workflow as ``python -m monai.bundle run``, without two more interpreter start-ups)."""
    import torch
    from monai.bundle import run

    root, cache = tmp_path / "bundle", tmp_path / "cache"
    overrides = {"bundle_root": str(root), "dataset_dir": str(dataset), "cache_dir": str(cache), "shots": SHOTS,
                 "backbone": "UltraAD-Tiny-ViT", "pretrained": "random", "allow_random_init": True,
                 "feature_layers": [1, 2, 3, 4]}
    configs = REPO / "bundle" / "configs"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run("training", config_file=str(configs / "train.json"), **overrides)
        run("evaluating", config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], **overrides)
    finally:
        torch.set_num_threads(before)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert not below(metrics, FLOORS), below(metrics, FLOORS)
