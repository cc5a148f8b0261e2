from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from monai_ultraad.cli import main
from tests.record_metrics import assert_image_metrics_match_records
from tests.record_schema import check_record

TINY = ["--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random", "--allow_random_init", "--feature_layers", "1,2,3,4"]


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    main(["fewshot", "--data_dir", str(synthetic_dataset), "--shots", "2", "--seeds", "0,1", *TINY, "--epochs", "2",
          "--output_dir", str(out), "--cache_dir", str(out / "cache"), "--progress", "False", "--device", "cpu"])
    return out


def test_fewshot_writes_checkpoints_metrics_and_summary(trained):
    for seed in (0, 1):
        d = trained / f"seed{seed}"
        assert (d / "model.pt").is_file() and (d / "roc.png").is_file()
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["test"]["seed"] == seed
        assert_image_metrics_match_records(metrics["test"], json.loads((d / "predictions.json").read_text()))
        assert metrics["validation"]["threshold"] == metrics["test"]["threshold"]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["summary"]["image_auroc"]["n"] == 2 and summary["random_weights"]
    assert "RANDOM WEIGHTS" in summary["warning"] and "RANDOM WEIGHTS" in (trained / "summary.md").read_text()
    Image.open(trained / "seed0" / "roc.png").verify()


def test_evaluate_uses_recorded_test_split(trained, synthetic_dataset, tmp_path, capsys):
    main(["evaluate", "--checkpoint", str(trained / "seed0" / "model.pt"), "--data_dir", str(synthetic_dataset),
          "--allow_random_init", "--output_dir", str(tmp_path), "--cache_dir", str(trained / "cache"),
          "--progress", "False", "--device", "cpu"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    recorded = json.loads((trained / "seed0" / "metrics.json").read_text())["test"]
    assert metrics["n_images"] == recorded["n_images"]
    assert metrics["image_auroc"] == pytest.approx(recorded["image_auroc"])
    assert "image_auroc=" in capsys.readouterr().out


def test_predict_writes_overlay_and_probabilities(trained, synthetic_dataset, tmp_path):
    images = sorted((synthetic_dataset / "images").glob("*.png"))[:2]
    main(["predict", "--checkpoint", str(trained / "seed0" / "model.pt"), "--images", ",".join(map(str, images)),
          "--output_dir", str(tmp_path), "--allow_random_init", "--progress", "False", "--device", "cpu"])
    for image in images:
        record = check_record(json.loads((tmp_path / f"{image.stem}.json").read_text()))
        assert abs(sum(record["class_probabilities"].values()) - 1) < 1e-5
        assert record["predicted_class"] in record["class_probabilities"] and record["image"] == image.name
        assert record["random_weights"] and "RANDOM WEIGHTS" in record["warning"]
        overlay = Image.open(tmp_path / f"{image.stem}_heatmap.png")
        assert overlay.width >= Image.open(image).width
        assert (tmp_path / f"{image.stem}_heatmap.nii.gz").is_file()
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def _run(*args):
    return subprocess.run([sys.executable, "-m", "monai_ultraad.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_clear_line(tmp_path, trained, synthetic_dataset):
    missing = _run("fewshot", "--data_dir", str(tmp_path / "nowhere"), *TINY)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    no_weights = _run("fewshot", "--data_dir", str(synthetic_dataset), "--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random")
    assert no_weights.returncode == 2 and "large_files.yml" in no_weights.stderr
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_text("nope")
    r = _run("predict", "--checkpoint", str(bad_ckpt), "--images", "x.png")
    assert r.returncode == 2 and "bad.pt" in r.stderr
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = _run("predict", "--checkpoint", str(trained / "seed0" / "model.pt"), "--images", str(corrupt),
             "--allow_random_init", "--output_dir", str(tmp_path / "out"), "--device", "cpu")
    assert r.returncode == 2 and "corrupt.png" in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_too_many_shots_is_a_clear_error(synthetic_dataset):
    r = _run("fewshot", "--data_dir", str(synthetic_dataset), "--shots", "50", *TINY, "--epochs", "1")
    assert r.returncode == 2 and "fewer than" in r.stderr
