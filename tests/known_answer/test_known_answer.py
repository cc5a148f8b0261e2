"""Known-answer test of UltraAD's whole learning path (few-shot training -> map, threshold, class decision).

A randomly initialised tower can still tell where a strong patch-scale contrast is, so on the synthetic set of
:mod:`tests.known_answer.synthetic` few-shot UltraAD (tiny backbone, seed 0, the library's default budget) must
reach the floors below; each deliberately broken variant of :mod:`tests.known_answer.variants` must fall under
the floor that depends on the broken part. The floors sit under the worst of 3 seeds measured at the defaults
(README, "Known-answer test"), the broken variants far under them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ultraad import checkpoint, engine
from monai_ultraad.metrics import dice_threshold_curve
from tests.known_answer.harness import corrupting, prepare, run_method, run_ultraad
from tests.known_answer.variants import broken

#: metric -> floor; the variants below name the floors that must fail.
FLOORS = {"pixel_auroc": 0.85, "dice": 0.35, "image_auroc": 0.80, "benign_malignant_auroc": 0.60,
          "balanced_accuracy": 0.45}
#: variant -> the floors it must fail (the part each floor depends on)
MUST_FAIL = {
    "map_transposed": ("pixel_auroc", "dice"),
    "map_flipped": ("pixel_auroc", "dice"),
    "seg_loss_detached": ("pixel_auroc", "dice"),
    "cls_loss_detached": ("balanced_accuracy",),
    "no_memory": ("balanced_accuracy",),
}


def below(metrics: dict, names) -> list[str]:
    return [f"{k}={metrics[k]:.3f} < {FLOORS[k]}" for k in names if not metrics[k] >= FLOORS[k]]


@pytest.fixture(scope="module")
def one_thread():
    """The head's tensors are tiny: one thread is several times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def known_answer(tmp_path_factory, one_thread):
    return prepare(tmp_path_factory.mktemp("known_answer"))


@pytest.fixture(scope="module")
def trained(known_answer):
    return run_ultraad(known_answer)


def test_defaults_reach_every_floor(trained):
    metrics, result, _ = trained
    assert not below(metrics, FLOORS), below(metrics, FLOORS)
    assert result.calibration["temperature"] > 0 and len(result.calibration["bias"]) == 3


def test_validation_threshold_serves_the_map(known_answer, trained):
    """Dice at the validation threshold is within 0.05 of the best Dice any threshold reaches on the test set."""
    metrics, _, model = trained
    batches = engine.validation_batches(known_answer.split.test, known_answer.store)
    _, _, maps = engine.evaluate_features(model, batches, keep_maps=True)
    _, dice = dice_threshold_curve(maps, [s.mask for _, samples in batches for s in samples])
    assert metrics["dice"] >= np.nanmax(dice) - 0.05, (metrics["dice"], np.nanmax(dice))


def test_calibration_is_in_the_checkpoint(known_answer, trained, tmp_path):
    _, result, model = trained
    path = checkpoint.save_checkpoint(tmp_path / "model.pt", model, threshold=result.threshold, fit_result=result)
    payload = checkpoint.read_checkpoint(path)
    assert payload["calibration"]["temperature"] == pytest.approx(result.calibration["temperature"])
    assert {"ece", "balanced_accuracy"} <= set(payload["calibration"]["validation_before"])
    reloaded, _ = checkpoint.load_checkpoint(path, backbone=known_answer.backbone, allow_random_init=True)
    feats = known_answer.store.get(known_answer.split.test[:4])
    torch.testing.assert_close(reloaded.forward_features(feats).class_logits, model.eval().forward_features(feats).class_logits)


@pytest.mark.parametrize("variant", ["map_transposed", "map_flipped"])
def test_a_misplaced_map_fails(known_answer, trained, variant, monkeypatch):
    """The trained model, its map moved against the mask at evaluation (threshold re-chosen the same way)."""
    _, _, model = trained
    with broken(variant, monkeypatch):
        val = engine.validation_batches(known_answer.split.validation, known_answer.store)
        threshold, _ = engine.choose_threshold(model, val)
        metrics, _ = engine.evaluate(model, known_answer.split.test, known_answer.store, threshold, progress=False)
    assert len(below(metrics, MUST_FAIL[variant])) == 2, metrics  # both map floors fail


@pytest.mark.parametrize("variant", ["seg_loss_detached", "cls_loss_detached", "no_memory"])
def test_a_broken_learning_path_fails(known_answer, variant, monkeypatch):
    with broken(variant, monkeypatch) as model_kwargs:
        metrics, _, _ = run_ultraad(known_answer, **model_kwargs)
    failed = below(metrics, MUST_FAIL[variant])
    assert failed, f"{variant} passed the floors {MUST_FAIL[variant]}: {metrics}"


def test_fusion_is_trained(known_answer, trained):
    """No floor depends on the fusion on this set (measured: switched off it passes them, README); so at least
    check that training reaches it: its zero-initialised output projection must have moved."""
    _, _, model = trained
    assert model.fusion.attention.out_proj.weight.abs().max() > 1e-3


#: Benchmark methods held to the same floors (on the outputs they have); see README for the others, tried read-only.
BENCHMARK_METHODS = ("ultraad",)

#: Every trained baseline, with floors for the outputs it has, set under its figures on this set (README,
#: "Known-answer test"), and the corruption of its training data that must take it under them: the shots' labels
#: rotated (normal -> benign -> malignant -> normal) for the classifiers and prompt learners, the shots' masks
#: transposed for the segmentation learners. Chance is 0.5 (AUROC) and 0.333 (balanced accuracy).
BASELINE_FLOORS = {
    "linear_probe": ({"image_auroc": 0.60, "benign_malignant_auroc": 0.60, "balanced_accuracy": 0.45}, "labels"),
    "lp_plus_plus": ({"image_auroc": 0.65, "benign_malignant_auroc": 0.70, "balanced_accuracy": 0.45}, "labels"),
    "clip_adapter": ({"benign_malignant_auroc": 0.55, "balanced_accuracy": 0.40}, "labels"),
    "tip_adapter_f": ({"image_auroc": 0.60}, "labels"),
    "coop": ({"image_auroc": 0.70}, "labels"),
    "cocoop": ({"image_auroc": 0.68, "balanced_accuracy": 0.39}, "labels"),
    "april_gan": ({"pixel_auroc": 0.85, "dice": 0.35, "image_auroc": 0.80}, "masks"),
    "anomalyclip": ({"pixel_auroc": 0.78, "dice": 0.24}, "masks"),
    "mvfa": ({"pixel_auroc": 0.85, "dice": 0.45, "image_auroc": 0.75}, "masks"),
}
#: a shorter schedule where the default one would not fit a test (floors measured at it, 3 seeds)
BASELINE_OPTIONS = {"mvfa": {"epochs": 3, "views": 4}}  # default 50 epochs x 11 views: about 10 min here


@pytest.mark.parametrize("key", BENCHMARK_METHODS)
def test_benchmark_method_reaches_the_floors(known_answer, key):
    metrics = run_method(known_answer, key)
    applicable = [k for k in FLOORS if metrics.get(k) is not None]
    assert applicable, f"{key} has none of the floor metrics"
    assert not below(metrics, applicable), below(metrics, applicable)


@pytest.mark.parametrize("broken", [False, True], ids=["trained", "corrupted"])
@pytest.mark.parametrize("key", sorted(BASELINE_FLOORS))
def test_trained_baseline_learns_the_known_answer(known_answer, key, broken, monkeypatch):
    """Trained as it is, the baseline reaches its floors; trained on corrupted shots, it falls under at least one."""
    floors, kind = BASELINE_FLOORS[key]
    if broken:
        from benchmarks import protocol

        monkeypatch.setattr(protocol, "fit_data", corrupting(kind, protocol.fit_data))
    metrics = run_method(known_answer, key, **BASELINE_OPTIONS.get(key, {}))
    failed = [f"{m}={metrics[m]:.3f} < {f}" for m, f in floors.items() if not metrics[m] >= f]
    if broken:
        assert failed, f"{key} trained on {kind} corrupted still passes {floors}: {metrics}"
    else:
        assert not failed, failed
