"""MVFA training, selection, checkpoints and the CLI on the tiny random backbone (a smoke test of the pipeline)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from monai_ultraad import mvfa_engine
from monai_ultraad.cli import main
from monai_ultraad.data import make_fewshot_split, read_dataset

TINY = ["--backbone", "UltraAD-Tiny-ViT", "--pretrained", "random", "--allow_random_init", "--feature_layers", "1,2,3,4"]


@pytest.fixture(scope="module")
def split(synthetic_dataset):
    return make_fewshot_split(read_dataset(synthetic_dataset), k=1, seed=0, max_val_per_class=2)


def test_fit_trains_every_view_and_takes_statistics_and_epoch_from_validation(tiny_backbone, split):
    model = mvfa_engine.build_model(tiny_backbone, seed=0)
    cache = mvfa_engine.PrefixCache(model)
    start = [p.detach().clone() for p in model.trainable_parameters()]
    config = mvfa_engine.MVFAConfig(epochs=3, views=2, seed=0)
    result = mvfa_engine.fit(model, split.shots, split.validation, config, cache, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and 1 <= result.best_epoch <= 3
    best = result.history[result.best_epoch - 1]
    assert best["val_score"] == max(h["val_score"] for h in result.history)
    assert any((p - q).abs().max() > 0 for p, q in zip(model.trainable_parameters(), start))
    # memory: every view (2) of the one normal shot, patch and class tokens
    assert model.seg_memory.shape[1] == 2 * (1 + tiny_backbone.grid_size**2)
    # the statistics are the validation images' own branch extremes (never the test set's)
    streams, _ = cache.streams(split.validation, 1)
    raw = model.raw_branches(model.adapted_tokens(streams))
    expected = [raw["zero_shot_map"].min(), raw["zero_shot_map"].max(), raw["few_shot_map"].min(),
                raw["few_shot_map"].max()]
    torch.testing.assert_close(model.norm_stats, torch.stack(expected).float(), rtol=0, atol=1e-6)
    assert 0 < result.threshold < 1
    # the views are cached once: 2 views x 3 shots + validation images, never recomputed over epochs
    assert cache.misses == 2 * len(split.shots) + len(split.validation)


def test_zero_shot_mode_has_no_memory_and_scores_an_unseen_set(tiny_backbone, split):
    model = mvfa_engine.build_model(tiny_backbone, seed=0, mode="zero_shot")
    config = mvfa_engine.MVFAConfig.zero_shot(epochs=1, seed=0)
    assert config.views == 1 and config.lr == 1e-4
    mvfa_engine.fit(model, split.shots, split.validation, config, progress=False)
    assert not model.has_memory
    metrics, predictions = mvfa_engine.evaluate(model, split.test, 0.5, progress=False)
    assert 0 <= metrics["pixel_auroc"] <= 1
    from sklearn.metrics import roc_auc_score  # the image AUROC itself, from the per-image records

    truth = [p["label"] != "normal" for p in predictions]
    expected = roc_auc_score(truth, [p["anomaly_score"] for p in predictions])
    assert metrics["image_auroc"] == pytest.approx(expected, abs=1e-9)
    assert metrics["cls_auroc_macro"] is None and len(predictions) == len(split.test)


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mvfa")
    main(["fewshot", "--model", "mvfa", "--data_dir", str(synthetic_dataset), "--shots", "1", "--seeds", "0", *TINY,
          "--epochs", "2", "--views", "2", "--max_val_per_class", "2", "--output_dir", str(out), "--progress", "False",
          "--device", "cpu"])
    return out


def test_cli_fewshot_evaluate_predict(trained, synthetic_dataset, tmp_path, capsys):
    metrics = json.loads((trained / "seed0" / "metrics.json").read_text())["test"]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["model"] == "MVFA" and summary["config"]["epochs"] == 2 and summary["config"]["views"] == 2
    assert summary["config"]["lr"] == 1e-3 and summary["config"]["beta1"] == 0.5  # MVFA's own optimiser
    assert "RANDOM WEIGHTS" in (trained / "summary.md").read_text()
    checkpoint = trained / "seed0" / "model.pt"
    assert mvfa_engine.is_mvfa_checkpoint(checkpoint)
    main(["evaluate", "--checkpoint", str(checkpoint), "--data_dir", str(synthetic_dataset), "--allow_random_init",
          "--output_dir", str(tmp_path / "eval"), "--progress", "False", "--device", "cpu"])
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["n_images"] == metrics["n_images"]  # the recorded test split
    assert again["image_auroc"] == pytest.approx(metrics["image_auroc"])  # the checkpoint carries memory + stats
    assert again["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"])
    images = sorted((synthetic_dataset / "images").glob("*.png"))[:2]
    main(["predict", "--checkpoint", str(checkpoint), "--images", ",".join(map(str, images)), "--output_dir",
          str(tmp_path / "pred"), "--allow_random_init", "--progress", "False", "--device", "cpu"])
    for image in images:
        record = json.loads((tmp_path / "pred" / f"{image.stem}.json").read_text())
        assert record["model"] == "MVFA" and record["random_weights"] and "RANDOM WEIGHTS" in record["warning"]
        assert 0 <= record["heatmap_max"] <= 1
        Image.open(tmp_path / "pred" / f"{image.stem}_heatmap.png").verify()


def test_random_checkpoint_needs_allow_random_init(trained):
    from monai_ultraad.errors import WeightsError

    with pytest.raises(WeightsError, match="allow_random_init"):
        mvfa_engine.load_checkpoint(trained / "seed0" / "model.pt")


def test_benchmark_wrapper_runs_the_library_model_on_images(tiny_backbone, split):
    from benchmarks.methods import METHODS, FitData
    from benchmarks.protocol import predict_batches
    from monai_ultraad import engine
    from monai_ultraad.constants import CLASS_NAMES

    method = METHODS["mvfa"](tiny_backbone, CLASS_NAMES, epochs=1, views=1)
    assert method.needs_images and method.name == "MVFA"
    labels = torch.tensor([int(it["label"]) for it in split.shots])
    data = FitData(None, labels, None, None, None, list(split.shots), list(split.validation), [], None, seed=0)
    chosen = method.fit(data)
    assert chosen["epochs"] == 1 and chosen["steps_per_epoch"] == len(split.shots) and chosen["mode"] == "segmentation"
    samples = engine.load_eval_samples(split.test[:3])
    (pred, maps, _), = list(predict_batches(method, [(None, samples)], tiny_backbone.image_size))
    assert pred.anomaly_score.shape == (3,) and pred.class_probs is None
    assert pred.anomaly_map.shape == (3, 1, 64, 64) and len(maps) == 3 and maps[0].shape == samples[0].mask.shape
    direct = mvfa_engine.evaluate(method.model, split.test[:3], 0.5, progress=False)[1]
    assert [p["anomaly_score"] for p in direct] == pytest.approx(pred.anomaly_score.tolist(), abs=1e-6)
