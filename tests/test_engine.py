from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from monai_ultraad import checkpoint, engine
from monai_ultraad.data import make_fewshot_split, read_dataset
from monai_ultraad.errors import WeightsError
from monai_ultraad.networks import TINY_BACKBONE, ClipBackbone


@pytest.fixture(scope="module")
def split(synthetic_dataset):
    items = read_dataset(synthetic_dataset)
    return make_fewshot_split(items, k=2, seed=0, test_fraction=0.3)


@pytest.fixture()
def store(tiny_backbone, tmp_path):
    return engine.build_store(tiny_backbone, cache_dir=tmp_path / "cache", progress=False)


def _fit(backbone, split, store, seed=0, epochs=3):
    model = engine.build_model(backbone, seed=seed)
    cfg = engine.TrainConfig(epochs=epochs, batch_size=4, seed=seed)
    return model, engine.fit(model, split.shots, split.validation, store, cfg, progress=False), cfg


def test_fit_evaluate_and_records(tiny_backbone, split, store):
    model, result, _ = _fit(tiny_backbone, split, store)
    assert len(result.epoch_seconds) == 3 and 1 <= result.best_epoch <= 3
    assert 0.0 < result.threshold < 1.0
    assert result.history[0]["loss"] > 0 and "val_score" in result.history[0]
    assert any("RANDOM WEIGHTS" in n for n in result.notes)
    metrics, predictions = engine.evaluate(model, split.test, store, result.threshold, progress=False)
    assert metrics["n_images"] == len(split.test) == len(predictions)
    for key in ("image_auroc", "cls_auroc_macro", "pixel_auroc", "dice", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["random_weights"] is True
    assert set(predictions[0]["probabilities"]) == {"normal", "benign", "malignant"}


def test_training_is_reproducible_per_seed(tiny_backbone, split, store):
    a, _, _ = _fit(tiny_backbone, split, store, seed=1, epochs=2)
    b, _, _ = _fit(tiny_backbone, split, store, seed=1, epochs=2)
    c, _, _ = _fit(tiny_backbone, split, store, seed=2, epochs=2)
    sa, sb, sc = a.head_state_dict(), b.head_state_dict(), c.head_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["prompt_learner.ctx"], sc["prompt_learner.ctx"])


def test_training_reduces_the_loss(tiny_backbone, split, store):
    model = engine.build_model(tiny_backbone, seed=0)
    result = engine.fit(model, split.shots, [], store, engine.TrainConfig(epochs=15, batch_size=6), progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_epoch == 15 and result.threshold == 0.5 and any("no validation" in n for n in result.notes)



def test_bf16_training_learns_and_is_recorded(tiny_backbone, split, store, tmp_path):
    """bfloat16-autocast training: float32 weights, a falling loss, the precision kept in the checkpoint."""
    cfg = engine.TrainConfig(epochs=15, batch_size=6, precision="bf16")
    model = engine.build_model(tiny_backbone, seed=0)
    result = engine.fit(model, split.shots, [], store, cfg, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    ref = engine.build_model(tiny_backbone, seed=0)
    ref_result = engine.fit(ref, split.shots, [], store, engine.TrainConfig(epochs=15, batch_size=6), progress=False)
    # not bit-identical, but the same optimisation: first-epoch losses agree closely
    assert result.history[0]["loss"] == pytest.approx(ref_result.history[0]["loss"], rel=0.02)
    path = checkpoint.save_checkpoint(tmp_path / "bf16.pt", model, threshold=result.threshold, train_config=cfg)
    assert checkpoint.read_checkpoint(path)["train_config"]["precision"] == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        engine.TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        engine.autocast("half", "cpu")

def test_cache_means_backbone_runs_once(tiny_backbone, split, tmp_path, monkeypatch):
    store = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False)
    _fit(tiny_backbone, split, store, epochs=1)
    assert store.misses == len(split.shots) + len(split.validation)

    def boom(*args, **kwargs):
        raise AssertionError("backbone ran although every feature is cached")

    # a new store on the same cache folder (another seed, another process) must not run the backbone
    monkeypatch.setattr(tiny_backbone, "encode_image", boom)
    again = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False)
    _fit(tiny_backbone, split, again, seed=5, epochs=2)
    assert again.misses == 0 and again.hits > 0


def test_cached_features_equal_fresh_ones(tiny_backbone, split, tmp_path):
    store = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False)
    first = store.get(split.shots[:3])
    reread = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False).get(split.shots[:3])
    torch.testing.assert_close(first.patch_tokens, reread.patch_tokens)
    images = torch.stack([store._prepare(it) for it in split.shots[:3]])
    fresh = tiny_backbone.encode_image(images)
    torch.testing.assert_close(reread.patch_tokens.float(), fresh.patch_tokens, rtol=1e-2, atol=1e-2)  # float16 store


def test_corrupt_cache_entry_is_recomputed(tiny_backbone, split, tmp_path):
    store = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False)
    store.get(split.shots[:1])
    entry = next((tmp_path / "c").rglob("*.pt"))
    entry.write_bytes(b"garbage")
    fresh = engine.build_store(tiny_backbone, cache_dir=tmp_path / "c", progress=False)
    feats = fresh.get(split.shots[:1])
    assert fresh.misses == 1 and feats.cls_token.shape[0] == 1


def test_checkpoint_roundtrip(tiny_backbone, split, store, tmp_path):
    model, result, cfg = _fit(tiny_backbone, split, store, epochs=2)
    path = checkpoint.save_checkpoint(tmp_path / "m" / "model.pt", model, threshold=result.threshold, train_config=cfg,
                                  split=split.to_dict(), fit_result=result)
    assert not list(path.parent.glob(".*tmp"))
    payload = checkpoint.read_checkpoint(path)
    assert payload["split"]["shots"] == [it["id"] for it in split.shots]
    assert payload["model"]["backbone"]["model_name"] == TINY_BACKBONE and payload["random_weights"]
    assert payload["train_config"]["seed"] == 0 and payload["versions"]["monai_ultraad"]
    with pytest.raises(WeightsError, match="randomly initialised"):
        checkpoint.load_checkpoint(path)
    loaded, _ = checkpoint.load_checkpoint(path, backbone=tiny_backbone)
    m1, _ = engine.evaluate(model, split.test, store, result.threshold, progress=False)
    m2, _ = engine.evaluate(loaded, split.test, store, payload["threshold"], progress=False)
    assert m1["image_auroc"] == pytest.approx(m2["image_auroc"]) and m1["dice"] == pytest.approx(m2["dice"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt, _ = checkpoint.load_checkpoint(path, allow_random_init=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x).anomaly_map, loaded(x).anomaly_map)


def test_checkpoint_refuses_other_backbone(tiny_backbone, split, store, tmp_path):
    model, result, _ = _fit(tiny_backbone, split, store, epochs=1)
    path = checkpoint.save_checkpoint(tmp_path / "model.pt", model, threshold=result.threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other_layers = ClipBackbone(TINY_BACKBONE, None, (2, 4), allow_random_init=True)
        other_weights = ClipBackbone(TINY_BACKBONE, None, (1, 2, 3, 4), allow_random_init=True, init_seed=7)
    with pytest.raises(WeightsError, match="cannot be loaded into another backbone"):
        checkpoint.load_checkpoint(path, backbone=other_layers)
    with pytest.raises(WeightsError, match="only fits the weights it was trained on"):
        checkpoint.load_checkpoint(path, backbone=other_weights)


def test_checkpoint_from_before_the_calibration_loads_and_unknown_config_is_refused(tiny_backbone, split, store,
                                                                                   tmp_path):
    """A file as the first versions wrote it (model config with its never-used ``extra``, no calibration, no memory
    centring / term weights) still loads, with those parts neutral; a config field this version does not know
    is a clear error."""
    model, result, _ = _fit(tiny_backbone, split, store, epochs=1)
    path = checkpoint.save_checkpoint(tmp_path / "model.pt", model, threshold=result.threshold)
    payload = torch.load(path, weights_only=True)
    payload["model"]["config"]["extra"] = {}
    payload.pop("calibration")
    for key in ("memory.center", "memory.log_term_weights", "memory.class_bias", "calibration.temperature",
                "calibration.bias"):
        payload["head_state"].pop(key)
    torch.save(payload, tmp_path / "old.pt")
    old, _ = checkpoint.load_checkpoint(tmp_path / "old.pt", backbone=tiny_backbone)
    assert float(old.calibration.temperature) == 1.0 and not old.memory.class_bias.any()
    assert old.config == model.config
    payload["model"]["config"]["adapter_depth"] = 2
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(WeightsError, match="newer.pt holds no usable UltraAD model config.*adapter_depth"):
        checkpoint.load_checkpoint(tmp_path / "newer.pt", backbone=tiny_backbone)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04not really")
    with pytest.raises(WeightsError, match="bad.pt"):
        checkpoint.read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(WeightsError, match="not a monai_ultraad checkpoint"):
        checkpoint.read_checkpoint(foreign)
    with pytest.raises(WeightsError, match="not found"):
        checkpoint.read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.realdata
def test_real_bus_uclm_k4_train_and_disjoint_test(data_dir, tiny_backbone, tmp_path):
    """k=4 shots per class from bus_uclm, evaluated on patients that gave neither shots nor validation images."""
    items = read_dataset(data_dir / "bus_uclm")
    split = make_fewshot_split(items, k=4, seed=0, max_val_per_class=8)
    patients = lambda part: {it["patient"] for it in part}
    assert not patients(split.shots) & patients(split.test)
    assert not patients(split.validation) & patients(split.test)
    rng = np.random.default_rng(0)
    test = [split.test[i] for i in sorted(rng.choice(len(split.test), size=60, replace=False))]
    store = engine.build_store(tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    model = engine.build_model(tiny_backbone, seed=0)
    result = engine.fit(model, split.shots, split.validation, store, engine.TrainConfig(epochs=4), progress=False)
    metrics, predictions = engine.evaluate(model, test, store, result.threshold, progress=False)
    assert metrics["n_images"] == 60 and len(predictions) == 60
    for key in ("image_auroc", "cls_auroc_macro", "pixel_auroc", "dice", "accuracy", "balanced_accuracy"):
        assert np.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key
    assert {p["id"] for p in predictions}.isdisjoint({it["id"] for it in split.shots + split.validation})


def test_recorded_test_items_never_returns_training_images(split):
    from monai_ultraad.errors import InputDataError

    payload = {"split": split.to_dict()}
    items = split.shots + split.validation + split.test
    chosen = checkpoint.recorded_test_items(payload, items, "auto")  # same dataset: the recorded test images only
    assert [it["id"] for it in chosen] == [it["id"] for it in split.test]
    unseen = [{**it, "id": "other/" + it["id"]} for it in split.test]
    assert len(checkpoint.recorded_test_items(payload, unseen, "auto")) == len(unseen)  # another dataset: all of it
    with pytest.raises(InputDataError, match="none of the checkpoint's recorded test images"):
        checkpoint.recorded_test_items(payload, unseen, "test")
    with pytest.raises(InputDataError, match="split must be"):
        checkpoint.recorded_test_items(payload, items, "train")


def test_cache_key_follows_the_weights_not_their_path(tiny_backbone, tmp_path):
    """The same weights at two paths share cache entries; another activation or layer set does not."""
    import copy

    moved = copy.copy(tiny_backbone)
    moved.pretrained = "/elsewhere/weights.pt"
    a = engine.build_store(tiny_backbone, cache_dir=tmp_path, progress=False)
    b = engine.build_store(moved, cache_dir=tmp_path, progress=False)
    assert a.folder == b.folder
    other = copy.copy(tiny_backbone)
    other.quick_gelu = not tiny_backbone.quick_gelu
    assert engine.build_store(other, cache_dir=tmp_path, progress=False).folder != a.folder
