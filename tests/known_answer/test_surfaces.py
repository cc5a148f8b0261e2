"""The known-answer test through each surface at its own defaults: CLI, MONAI bundle, MONAI Label trainer.

Same synthetic set, same floors as tests/known_answer/test_known_answer.py; a surface whose defaults, plumbing
or checkpoint break the learning path fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _monailabel_python() -> str | None:
    """The MONAI Label environment's interpreter (scripts/make_monailabel_venv.sh), else this one if it has
    monailabel; None when neither."""
    import importlib.util

    venv = Path(os.environ.get("ULTRAAD_MONAILABEL_VENV", REPO / ".venv-monailabel"))
    if (venv / "bin" / "python").exists():
        return str(venv / "bin" / "python")
    return sys.executable if importlib.util.find_spec("monailabel") else None


def test_monailabel_trainer(dataset, tmp_path):
    """The app's training task at its defaults on the training pool's labels; its checkpoint then scored on the
    test split here. (MONAI Label trains on every labelled image: shots by its own seeded draw, the rest validate.)"""
    import numpy as np
    import torch
    from PIL import Image

    from monai_ultraad import engine
    from monai_ultraad.data import make_fewshot_split, read_dataset
    from tests.known_answer.harness import SEED

    python = _monailabel_python()
    if python is None:
        pytest.skip("no MONAI Label environment: build it with scripts/make_monailabel_venv.sh")
    split = make_fewshot_split(read_dataset(dataset), k=SHOTS, seed=SEED, split_seed=SEED)
    entries = []
    for item in [*split.shots, *split.validation]:
        name = engine.CLASS_NAMES[int(item["label"])]
        shape = np.asarray(Image.open(item["image"])).shape[:2]
        mask = np.asarray(Image.open(item["mask"])) > 127 if item.get("mask") else np.zeros(shape, bool)
        label = tmp_path / "labels" / f"{item['id'].replace('/', '_')}.png"
        label.parent.mkdir(exist_ok=True)
        Image.fromarray((mask * {"normal": 0, "benign": 1, "malignant": 2}[name]).astype(np.uint8)).save(label)
        entries.append({"id": item["id"], "image": str(item["image"]), "label": str(label), "class": name})
    (tmp_path / "labels.json").write_text(json.dumps(entries))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([python, str(REPO / "tests/known_answer/monailabel_train.py"), str(tmp_path / "labels.json"),
                             str(tmp_path / "model")], cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["shots_per_class"] == SHOTS
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, payload = engine.load_checkpoint(tmp_path / "model" / "ultraad.pt", allow_random_init=True)
        store = engine.build_store(model.backbone, cache_dir=None, progress=False)
        metrics, _ = engine.evaluate(model, split.test, store, payload["threshold"], progress=False)
    finally:
        torch.set_num_threads(before)
    assert not below(metrics, FLOORS), below(metrics, FLOORS)
