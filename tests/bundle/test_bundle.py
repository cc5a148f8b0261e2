"""The bundle as a MONAI user runs it: `python -m monai.bundle run training | evaluating | inferring | exporting`,
torchrun with 2 CPU processes, offline verify_metadata and verify_net_in_out, and bad overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.record_metrics import assert_benign_malignant_auroc_matches_records, assert_image_metrics_match_records
from tests.record_schema import check_record

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
TINY = ["--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random", "--allow_random_init", "True",
        "--feature_layers", "[1,2,3,4]"]
TRAIN_EVAL = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"

pytestmark = pytest.mark.realdata


def bundle(*args: str, timeout: int = 600, torchrun: bool = False) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"] \
        if torchrun else [sys.executable]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*prefix, "-m", "monai.bundle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle_root")
    cache = tmp_path_factory.mktemp("cache")
    result = ok(bundle("run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
                       "--dataset_dir", str(data_dir / "bus_uclm"), "--cache_dir", str(cache), "--epochs", "3",
                       "--max_val_per_class", "8", "--precision", "bf16", *TINY))  # bf16: the plumbing is tested too
    return root, cache, result


def test_training_writes_checkpoint_with_provenance(trained):
    root, _, result = trained
    from monai_ultraad.engine import read_checkpoint

    payload = read_checkpoint(root / "models" / "model.pt")
    assert payload["random_weights"] and payload["model"]["backbone"]["model_name"] == "UltraAD-Tiny-ViT"
    assert payload["train_config"]["seed"] == 0 and payload["extra"]["bundle_train_config"]["shots"] == 4
    assert payload["train_config"]["precision"] == "bf16"
    split = payload["split"]
    assert len(split["shots"]) == 12 and split["seed"] == 0
    assert set(split["shots"]).isdisjoint(split["test"]) and set(split["validation"]).isdisjoint(split["test"])
    assert 0 < payload["threshold"] < 1 and payload["versions"]["monai_ultraad"]
    assert "Epoch[3] Metrics" in result.stdout + result.stderr  # validation ran every epoch


def test_evaluating_uses_the_recorded_test_split(trained, data_dir):
    root, cache, _ = trained
    ok(bundle("run", "evaluating", "--config_file", TRAIN_EVAL, "--bundle_root", str(root),
              "--dataset_dir", str(data_dir / "bus_uclm"), "--cache_dir", str(cache), *TINY))
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    predictions = json.loads((root / "eval" / "predictions.json").read_text())
    from monai_ultraad.engine import read_checkpoint

    split = read_checkpoint(root / "models" / "model.pt")["split"]
    assert {p["id"] for p in predictions} == set(split["test"])
    assert metrics["n_images"] == len(split["test"]) and metrics["random_weights"]
    assert_image_metrics_match_records(metrics, predictions)
    for key in ("pixel_auroc", "dice"):
        assert 0 <= metrics[key] <= 1
    Image.open(root / "eval" / "roc.png").verify()


def test_evaluating_on_an_unseen_dataset(trained, data_dir, tmp_path):
    root, cache, _ = trained
    subset = tmp_path / "bra"
    subset.mkdir()
    rows = (data_dir / "bus_bra" / "labels.csv").read_text().splitlines()
    header, body = rows[0], rows[1:]
    picked = body[:12] + body[-12:]
    (subset / "labels.csv").write_text("\n".join([header, *[_absolute(r, data_dir / "bus_bra") for r in picked]]) + "\n")
    ok(bundle("run", "evaluating", "--config_file", TRAIN_EVAL, "--bundle_root", str(root),
              "--dataset_dir", str(subset), "--cache_dir", str(cache), "--output_dir", str(tmp_path / "out"), *TINY))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_images"] == 24 and metrics["n_normal"] == 0
    assert metrics["image_auroc"] is None  # no normal image: undefined, and said so
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert_benign_malignant_auroc_matches_records(metrics, predictions)


def _absolute(row: str, root: Path) -> str:
    image, mask, *rest = row.split(",")
    return ",".join([str(root / image), str(root / mask), *rest])


def test_inferring_writes_nifti_png_json_and_csv(trained, data_dir, tmp_path):
    root, _, _ = trained
    images = tmp_path / "in"
    images.mkdir()
    names = ["ALWI_000.jpg", "ALWI_001.jpg"]
    for name in names:
        (images / name).write_bytes((data_dir / "bus_uclm" / "images" / name).read_bytes())
    out = tmp_path / "out"
    ok(bundle("run", "inferring", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(root),
              "--input_dir", str(images), "--output_dir", str(out), "--backbone", "UltraAD-Tiny-ViT",
              "--allow_random_init", "True"))
    for name in names:
        stem = Path(name).stem
        width, height = Image.open(images / name).size
        heatmap = nib.load(out / f"{stem}_heatmap.nii.gz").get_fdata()
        assert heatmap.shape == (width, height) and 0 <= heatmap.min() and heatmap.max() <= 1
        record = check_record(json.loads((out / f"{stem}.json").read_text()))
        assert abs(sum(record["class_probabilities"].values()) - 1) < 1e-5 and "RANDOM WEIGHTS" in record["warning"]
        assert Image.open(out / f"{stem}_heatmap.png").size[0] >= width
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("image,predicted_class,P(normal)") and len(rows) == 3


def test_exported_torchscript_matches_the_model(trained):
    root, _, _ = trained
    ok(bundle("run", "exporting", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(root),
              "--backbone", "UltraAD-Tiny-ViT", "--allow_random_init", "True"))
    import warnings

    from monai_ultraad.engine import load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_checkpoint(root / "models" / "model.pt", allow_random_init=True)
        exported = torch.jit.load(str(root / "models" / "model.ts"))
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    maps, probs, scores = exported(x)
    torch.testing.assert_close(maps, out.anomaly_map, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs, out.class_probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores, out.anomaly_score, atol=1e-5, rtol=1e-4)


def test_verify_net_in_out(trained):
    root, _, _ = trained
    ok(bundle("verify_net_in_out", "--net_id", "verify_network", "--meta_file", str(CONFIGS / "metadata.json"),
              "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(root), "--device", "cpu",
              "--backbone", "UltraAD-Tiny-ViT", "--allow_random_init", "True",
              "--_meta_#network_data_format#inputs#image#spatial_shape", "[64,64]"))


def test_multi_gpu_config_under_torchrun_with_gloo(data_dir, tmp_path):
    root = tmp_path / "root"
    result = ok(bundle("run", "training", "--config_file",
                       f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']", "--bundle_root", str(root),
                       "--dataset_dir", str(data_dir / "bus_uclm"), "--cache_dir", str(tmp_path / "cache"),
                       "--epochs", "2", "--max_val_per_class", "4", *TINY, torchrun=True))
    assert (root / "models" / "model.pt").is_file()
    assert (result.stdout + result.stderr).count("Epoch: 2/2") >= 2  # both ranks trained


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--backbone", "ViT-Nope-99"], "unknown open_clip backbone"),
        (["--dataset_dir", "/nonexistent/dataset"], "dataset not found"),
        (["--shots", "500"], "fewer than shots=500"),
        (["--allow_random_init", "False"], "large_files.yml"),
    ],
)
def test_bad_overrides_fail_clearly_and_write_nothing(override, message, data_dir, tmp_path):
    args = ["--bundle_root", str(tmp_path), "--dataset_dir", str(data_dir / "bus_uclm"),
            "--cache_dir", str(tmp_path / "cache"), "--epochs", "1", *TINY]
    for i in range(0, len(override), 2):  # the override wins over the defaults above
        if override[i] in args:
            args[args.index(override[i]) + 1] = override[i + 1]
        else:
            args += override[i:i + 2]
    if "--allow_random_init" in override:
        args[args.index("--pretrained") + 1] = str(tmp_path / "models" / "missing.pt")
    result = bundle("run", "training", "--config_file", str(CONFIGS / "train.json"), *args)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_corrupt_checkpoint_is_a_clear_error(data_dir, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"not a checkpoint")
    result = bundle("run", "evaluating", "--config_file", TRAIN_EVAL, "--bundle_root", str(tmp_path),
                    "--dataset_dir", str(data_dir / "bus_uclm"), *TINY)
    assert result.returncode != 0 and "cannot read checkpoint" in result.stdout + result.stderr
    assert not (tmp_path / "eval").exists()


def test_checkpoint_into_another_backbone_is_refused(trained, data_dir, tmp_path):
    root, _, _ = trained
    (tmp_path / "a.jpg").write_bytes((data_dir / "bus_uclm" / "images" / "ALWI_000.jpg").read_bytes())
    result = bundle("run", "inferring", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(root),
                    "--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--backbone", "ViT-B-16",
                    "--allow_random_init", "True")
    assert result.returncode != 0 and "cannot be loaded into another backbone" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_verify_metadata_offline():
    schema = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
    if not schema.exists():
        pytest.skip("offline MONAI metadata schema not found beside the project")
    ok(bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(schema)))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert list(meta["network_data_format"]["outputs"]) == ["pred", "class_probs", "anomaly_score"]
    assert np.allclose(meta["network_data_format"]["inputs"]["image"]["spatial_shape"], [336, 336])
