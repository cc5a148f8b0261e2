"""Shared by the deploy app tests: one tiny checkpoint (random weights) and a runner for the app as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_ultraad import engine
from monai_ultraad.data import make_fewshot_split, read_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def checkpoint(tiny_backbone, synthetic_dataset, tmp_path_factory) -> Path:
    items = read_dataset(synthetic_dataset)
    split = make_fewshot_split(items, k=2, seed=0)
    store = engine.build_store(tiny_backbone, cache_dir=None, progress=False)
    model = engine.build_model(tiny_backbone, seed=0)
    result = engine.fit(model, split.shots, split.validation, store, engine.TrainConfig(epochs=2), progress=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    engine.save_checkpoint(path, model, threshold=result.threshold, split=split.to_dict(), fit_result=result)
    return path


def app_command(input_dir: Path, output_dir: Path, model: Path, *extra: str) -> tuple[list[str], dict]:
    """The command line and environment of one deploy app run (random weights allowed, reproducible UIDs)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    args = [sys.executable, str(REPO / "deploy_app"), "--allow-random-init", "--deterministic-uids", "test",
            "-i", str(input_dir), "-o", str(output_dir), "-m", str(model), *extra]
    return args, env


@pytest.fixture(scope="session")
def run_deploy_app():
    """``run_deploy_app(input, output, model, *extra, timeout=600)`` -> CompletedProcess;
    ``run_deploy_app.popen(input, output, model, *extra)`` -> a running Popen (stdout/stderr piped, text)."""

    def run(input_dir: Path, output_dir: Path, model: Path, *extra: str, timeout: int = 600):
        args, env = app_command(input_dir, output_dir, model, *extra)
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                              check=False)

    def popen(input_dir: Path, output_dir: Path, model: Path, *extra: str):
        args, env = app_command(input_dir, output_dir, model, *extra)
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)

    run.popen = popen
    return run
