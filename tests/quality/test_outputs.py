"""Every output states the input gate's flags, and the refuse options refuse flagged inputs with the reason.

Made images (tinted B-mode; with a drawn calliper cross; with a pasted colour-flow patch) through the CLI
``predict``, the bundle's ``inferring`` workflow, the deploy app (run report and SR) and the MONAI Label infer task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_ultraad import engine
from monai_ultraad.cli import main
from tests.record_schema import check_record

from .synthetic import bmode, draw_cross, paste_colour_flow

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"plain": [], "cross": ["marks"], "flow": ["colour_overlay"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gate_images")
    made = {"plain": bmode(seed=11), "cross": draw_cross(bmode(seed=12), (80, 200)),
            "flow": paste_colour_flow(bmode(seed=13), (120, 160))}
    paths = {}
    for name, rgb in made.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rgb).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone, tmp_path_factory) -> Path:
    """An untrained head on the tiny random backbone: the outputs' content, not their accuracy, is under test."""
    path = tmp_path_factory.mktemp("gate_bundle") / "models" / "model.pt"
    engine.save_checkpoint(path, engine.build_model(tiny_backbone, seed=0), threshold=0.5)
    return path


def _predict(checkpoint: Path, images: dict[str, Path], out: Path, *extra: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["predict", "--checkpoint", str(checkpoint), "--images", ",".join(str(p) for p in images.values()),
              "--output_dir", str(out), "--allow_random_init", "--progress", "False", "--device", "cpu", *extra])


def test_cli_json_states_the_flags_and_analyses_by_default(checkpoint, images, tmp_path):
    _predict(checkpoint, images, tmp_path)
    for name, flags in EXPECTED.items():
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["input_quality"]["flags"] == flags, record["input_quality"]
        check_record(record)
        assert "class_probabilities" in record and (tmp_path / f"{name}_heatmap.png").is_file()  # analysed anyway
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].endswith(",input_flags") and any(r.endswith(",marks") for r in rows[1:])


def test_cli_refuse_flagged(checkpoint, images, tmp_path, capsys):
    _predict(checkpoint, images, tmp_path, "--refuse_flagged")
    assert "class_probabilities" in check_record(json.loads((tmp_path / "plain.json").read_text()))
    for name in ("cross", "flow"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert check_record(record, refused=True)["refused"] and "class_probabilities" not in record
        assert f"{name}.png: refused, not a plain B-mode image" in record["reason"]
        assert not (tmp_path / f"{name}_heatmap.png").exists()
    err = capsys.readouterr().err
    assert "calliper / annotation marks detected" in err and "colour Doppler / elastography overlay detected" in err


@pytest.mark.slow
def test_bundle_inference_outputs_state_the_flags(checkpoint, images, tmp_path):
    bundle_root = checkpoint.parent.parent
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in images.values():
        (inputs / path.name).write_bytes(path.read_bytes())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
                             str(REPO / "bundle" / "configs" / "inference.json"), "--bundle_root", str(bundle_root),
                             "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out"), "--backbone",
                             "UltraAD-Tiny-ViT", "--allow_random_init", "True"],
                            cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    for name, flags in EXPECTED.items():
        record = check_record(json.loads((tmp_path / "out" / f"{name}.json").read_text()))
        assert record["input_quality"]["flags"] == flags
    rows = {r.split(",")[0]: r for r in (tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:]}
    assert rows["flow.png"].endswith(",colour_overlay") and rows["plain.png"].endswith(",")


def _study(images: dict[str, Path], folder: Path) -> Path:
    from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

    folder.mkdir()
    for name, path in images.items():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        wrap_as_ultrasound(rgb, folder / f"{name}.dcm", with_region=True, region_bounds=(4, 4, w - 5, h - 5))
    return folder


def _deploy(study: Path, out: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "deploy_app"), "--allow-random-init", "--deterministic-uids",
                           "gate", "-i", str(study), "-o", str(out), "-m", str(checkpoint), *extra],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO, check=False)


def _sr_texts(path: Path) -> list[str]:
    found = []

    def walk(items):
        for item in items:
            if item.get("ValueType") == "TEXT":
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).ContentSequence)
    return found


@pytest.mark.slow
def test_deploy_app_states_flags_in_sr_and_run_report_and_refuses(checkpoint, images, tmp_path):
    study = _study(images, tmp_path / "study")
    out = tmp_path / "out"
    result = _deploy(study, out, checkpoint)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "ultraad_run.json").read_text())
    assert {f: q["flags"] for f, q in report["input_quality"].items()} == {f"{n}.dcm": f for n, f in EXPECTED.items()}
    texts = {}
    for sr in out.glob("sr_[0-9]*.dcm"):
        source = pydicom.dcmread(sr).CurrentRequestedProcedureEvidenceSequence  # which image this SR is about
        assert source
        texts[sr] = " | ".join(t for t in _sr_texts(sr) if t.startswith("Input quality:"))
    assert len(texts) == 3
    joined = "\n".join(texts.values())
    assert joined.count("Input quality: plain B-mode") == 1
    assert "Input quality: calliper / annotation marks detected" in joined
    assert "Input quality: colour Doppler / elastography overlay detected" in joined

    refused_out = tmp_path / "refused"
    result = _deploy(study, refused_out, checkpoint, "--refuse-flagged")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((refused_out / "ultraad_run.json").read_text())
    assert report["processed"] == ["plain.dcm"]
    reasons = {r["file"]: r["reason"] for r in report["refused"]}
    assert set(reasons) == {"cross.dcm", "flow.dcm"} and "calliper / annotation marks" in reasons["cross.dcm"]
    assert len(list(refused_out.glob("sr_[0-9]*.dcm"))) == 1
