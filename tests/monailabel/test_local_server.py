"""The MONAI Label server on a folder of BUS-UCLM images, called as 3D Slicer's MONAI Label module calls it:
GET /info/, GET /datastore/?output=all, POST /infer/ultraad, PUT /datastore/label, POST /train/ultraad,
POST /activelearning/most_uncertain; plus bad uploads, an unknown image and 20 concurrent infer requests.
Tiny random backbone: the numbers are not meaningful, and every answer must say RANDOM WEIGHTS.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from monailabel_servers import MonaiLabelServer, label_file, parse_multipart, uclm_rows

from tests.record_schema import check_record

#: Keys MONAI Label's infer task adds to every answer around the task's own JSON.
MONAILABEL_KEYS = {"label_names", "latencies", "centroids"}

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

PER_CLASS = 10  # 8 shots + 2 validation images per class
UNLABELLED = 4


@pytest.fixture(scope="module")
def studies(data_dir, tmp_path_factory):
    """A studies folder of links to BUS-UCLM images (read in place), and the Slicer-style label file of each."""
    root = tmp_path_factory.mktemp("ml_local")
    folder = root / "studies"
    folder.mkdir()
    rows = uclm_rows(data_dir, PER_CLASS + UNLABELLED)
    labelled, unlabelled = [], []
    for i, row in enumerate(rows):
        stem = Path(row["image"]).stem
        (folder / Path(row["image"]).name).symlink_to(data_dir / "bus_uclm" / row["image"])
        if i % (PER_CLASS + UNLABELLED) < PER_CLASS:
            labelled.append((stem, row, label_file(data_dir, row, root / f"{stem}.nii.gz")))
        else:
            unlabelled.append(stem)
    return root, folder, labelled, unlabelled


@pytest.fixture(scope="module")
def server(studies):
    root, folder, _, _ = studies
    srv = MonaiLabelServer(str(folder), root)
    yield srv
    srv.stop()


def test_info_names_models_trainer_and_strategy(server):
    status, body, _ = server.get("/info/")
    info = json.loads(body)
    assert status == 200
    assert info["name"] == "UltraAD" and info["labels"] == {"benign": 1, "malignant": 2}
    assert info["models"]["ultraad"]["dimension"] == 2
    assert "ultraad" in info["trainers"] and "most_uncertain" in info["strategies"]
    assert info["trainers"]["ultraad"]["config"]["precision"] == ["fp32", "bf16"]  # Slicer's drop-down, fp32 first


def test_datastore_lists_every_image(server, studies):
    _, _, labelled, unlabelled = studies
    status, body, _ = server.get("/datastore/?output=all")
    assert status == 200
    assert set(json.loads(body)["objects"]) == {s for s, _, _ in labelled} | set(unlabelled)


def test_infer_returns_label_in_image_geometry_and_json(server, studies, data_dir):
    import SimpleITK as sitk

    stem, row, _ = studies[2][PER_CLASS]  # a benign image
    status, body, headers = server.infer(stem)
    assert status == 200, body[:300]
    parts = parse_multipart(body, headers["content-type"])
    result = json.loads(parts["params"])
    # the same record as the CLI, bundle and deploy app, inside MONAI Label's own envelope keys
    check_record({k: v for k, v in result.items() if k not in MONAILABEL_KEYS})
    assert set(result["class_probabilities"]) == {"normal", "benign", "malignant"}
    assert abs(sum(result["class_probabilities"].values()) - 1) < 1e-4
    assert result["predicted_class"] in result["class_probabilities"]
    assert 0 <= result["anomaly_score"] <= 1 and 0 <= result["uncertainty"] <= 1
    assert result["random_weights"] is True and result["warning"].startswith("RANDOM WEIGHTS")
    from monai_ultraad.quality import assess_file  # the input gate's flags, as computed here on the same file

    expected = assess_file(data_dir / "bus_uclm" / row["image"]).to_dict()
    assert result["input_quality"]["flags"] == expected["flags"]  # the server decodes the JPEG with its own reader:
    for name in ("marks", "colour_overlay"):  # scores may differ by a glyph, the flags and thresholds may not
        assert result["input_quality"][name]["threshold"] == expected[name]["threshold"]
        assert result["input_quality"][name]["flagged"] == expected[name]["flagged"]
    label_path = Path(server.model_dir.parent / "infer_label.nii.gz")
    label_path.write_bytes(parts["image"])
    label = sitk.ReadImage(str(label_path))
    image = sitk.ReadImage(str(data_dir / "bus_uclm" / row["image"]))
    # 3D (W, H, 1), as Slicer 5.12's sitkUtils.PushVolumeToSlicer needs (tests/monailabel/test_slicer_label.py)
    assert label.GetDimension() == 3 and label.GetSize() == (*image.GetSize(), 1)
    values = sitk.GetArrayFromImage(label)
    assert set(np.unique(values)) <= {0, result["lesion_label_value"]}
    assert int((values > 0).sum()) == result["lesion_pixels"]


def test_unknown_image_is_404_with_reason(server):
    status, body, _ = server.infer("no_such_image")
    assert status == 404 and "no_such_image" in json.loads(body)["detail"]


def test_labels_are_saved_and_bad_uploads_rejected_without_loss(server, studies):
    _, folder, labelled, _ = studies
    for i, (stem, row, path) in enumerate(labelled):
        params = {"class": row["label"]} if i % 2 else {}  # half by params, half by the label's values
        status, body, _ = server.put_label(stem, path, params)
        assert status == 200, body
    stored = folder / "labels" / "final" / f"{labelled[0][0]}.nii.gz"
    before = hashlib.sha256(stored.read_bytes()).hexdigest()

    status, body, _ = server.put_label(labelled[0][0], b"\x00garbage, not an image" * 10)
    assert status == 400 and "rejected" in json.loads(body)["detail"]
    other = next(p for s, r, p in labelled if r["image"] != labelled[0][1]["image"])
    status, body, _ = server.put_label(labelled[0][0], other.read_bytes()[:40])  # truncated upload
    assert status == 400
    status, body, _ = server.put_label(labelled[0][0], labelled[0][2], {"class": "probably-bad"})
    assert status == 400 and "probably-bad" in json.loads(body)["detail"]
    status, body, _ = server.put_label("no_such_image", labelled[0][2])
    assert status == 404

    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before  # the good label survived every bad upload
    status, body, _ = server.get("/datastore/?output=train")
    assert len(json.loads(body)) == len(labelled)
    status, body, _ = server.get(f"/datastore/label/info?label={labelled[1][0]}&tag=final")
    assert json.loads(body)["class"] == labelled[1][1]["label"]


def test_train_k8_from_datastore_labels_then_infer_uses_it(server, studies):
    from monai_ultraad import engine

    start = time.perf_counter()
    task = server.train({"shots": 8, "epochs": 20, "seed": 0, "precision": "bf16"})  # as Slicer's drop-down sends it
    wall = time.perf_counter() - start
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    stats = json.loads(server.get("/info/")[1])["train_stats"]["ultraad"]
    assert stats["shots_per_class"] == 8 and stats["validation_images"] == 3 * (PER_CLASS - 8)
    assert stats["class_counts"] == {"normal": PER_CLASS, "benign": PER_CLASS, "malignant": PER_CLASS}
    assert stats["random_weights"] is True and stats["skipped"] == []
    # what MONAI Label's Slicer module reads for its progress and accuracy bars
    assert stats["epoch"] == stats["total_epochs"] == 20 and stats["total_time"] > 0
    assert 0 <= stats["best_metric"] <= 1
    payload = engine.read_checkpoint(server.model_dir / "ultraad.pt")  # the core package's format and reader
    assert len(payload["split"]["shots"]) == 24 and payload["train_config"]["seed"] == 0
    assert payload["train_config"]["precision"] == "bf16"
    assert payload["extra"]["source"] == "monailabel_app" and payload["random_weights"] is True
    print(f"\ntrain k=8 (tiny backbone): fit {stats['fit_seconds']:.2f} s, task {stats['total_seconds']:.2f} s, "
          f"request to DONE {wall:.1f} s")

    status, body, _ = server.infer(studies[2][0][0], output="json")
    result = json.loads(body)
    assert status == 200 and result["model"]["trained"] is True and result["model"]["shots"] == 24
    assert result["heatmap_threshold"] == pytest.approx(payload["threshold"])


def test_next_image_is_the_most_uncertain_unlabelled_one(server, studies):
    # max_new: score every unlabelled image in this request (the default, 8 per request, would score a seeded
    # subset of the 12, whose maximum need not be the maximum of all)
    status, body, _ = server.post("/activelearning/most_uncertain",
                                  data=json.dumps({"max_new": len(studies[3])}).encode(),
                                  headers={"Content-Type": "application/json"})
    choice = json.loads(body)
    assert status == 200 and choice["id"] in studies[3]
    scores = []
    for stem in studies[3]:
        result = json.loads(server.infer(stem, output="json")[1])
        scores.append((result["uncertainty"], stem))
    assert choice["uncertainty"] == pytest.approx(max(scores)[0], abs=1e-5)


def test_infer_latency_and_20_concurrent_requests(server, studies):
    stem = studies[2][0][0]
    times = []
    for _ in range(10):
        start = time.perf_counter()
        status, _, _ = server.infer(stem)
        times.append(time.perf_counter() - start)
        assert status == 200
    print(f"\ninfer latency through the server (tiny backbone, {len(times)} requests): "
          f"{statistics.mean(times) * 1000:.0f} ± {statistics.stdev(times) * 1000:.0f} ms")

    images = [s for s, _, _ in studies[2][:20]]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda s: server.infer(s, output="json", timeout=180), images))
    assert [a[0] for a in answers] == [200] * 20
    assert all(json.loads(a[1])["random_weights"] for a in answers)
    assert server.get("/info/")[0] == 200 and server.proc.poll() is None  # still up


def test_missing_backbone_weights_stop_the_server_loudly(studies):
    """The real configuration without its weight file: the server exits, naming the file and large_files.yml."""
    root, folder, _, _ = studies
    with pytest.raises(RuntimeError) as err:
        MonaiLabelServer(str(folder), root / "no_weights", backbone="UltraAD-Tiny-ViT",
                         pretrained=str(root / "ViT-L-14-336px.pt"), allow_random_init="false")
    assert "ViT-L-14-336px.pt" in str(err.value) and "large_files.yml" in str(err.value)
