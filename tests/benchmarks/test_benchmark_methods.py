"""Every benchmark baseline fits on a few shots and returns well-formed outputs (tiny backbone, synthetic features)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.methods import METHODS, FitData
from benchmarks.methods.common import ContextPrompts
from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.networks import VisualFeatures

# MVFA runs its adapted tower on images (tests/test_mvfa_engine.py, the smoke benchmark), not on synthetic taps;
# WinCLIP(+) and April-GAN read the images too (windows, raw taps): they run on a small synthetic image set here
BASELINES = [k for k in METHODS if not k.startswith("ultraad") and not getattr(METHODS[k], "needs_images", False)]
IMAGE_BASELINES = [k for k in METHODS if getattr(METHODS[k], "needs_images", False) and k != "mvfa"]


def _features(backbone, n: int, seed: int) -> VisualFeatures:
    g = torch.Generator().manual_seed(seed)
    n_layers = len(backbone.feature_layers)
    return VisualFeatures(torch.randn(n, backbone.embed_dim, generator=g),
                          torch.randn(n, n_layers, backbone.grid_size ** 2, backbone.vision_width, generator=g))


def _fit_data(backbone) -> FitData:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    size = backbone.image_size
    masks = torch.zeros(6, 1, size, size)
    masks[2:, :, size // 4: size // 2, size // 4: size // 2] = 1
    return FitData(_features(backbone, 6, 0), labels, masks, _features(backbone, 9, 1),
                   torch.tensor([0, 1, 2] * 3), [], [], [], store=None, seed=0)


@pytest.fixture(scope="module")
def image_data(tiny_backbone, synthetic_dataset):
    """FitData of a real (synthetic) image split and 5 test items, features in memory."""
    from benchmarks import protocol
    from monai_ultraad import engine
    from monai_ultraad.data import make_fewshot_split, read_dataset

    split = make_fewshot_split(read_dataset(synthetic_dataset), k=2, seed=0, split_seed=0)
    store = engine.build_store(tiny_backbone, cache_dir=None, progress=False)
    return protocol.fit_data(split, store, tiny_backbone, seed=0), split.test[:5]


def _fit_and_predict(key, tiny_backbone, image_data):
    method = METHODS[key](tiny_backbone, CLASS_NAMES)
    if key in IMAGE_BASELINES:
        data, items = image_data
        return method, method.fit(data), method.predict_items(items)
    return method, method.fit(_fit_data(tiny_backbone)), method.predict(_features(tiny_backbone, 5, 2))


@pytest.mark.parametrize("key", BASELINES + IMAGE_BASELINES)
def test_baseline_outputs(tiny_backbone, image_data, key):
    method, chosen, pred = _fit_and_predict(key, tiny_backbone, image_data)
    assert isinstance(chosen, dict)
    size = tiny_backbone.image_size
    assert pred.anomaly_score is not None and pred.anomaly_score.shape == (5,)
    assert torch.isfinite(pred.anomaly_score).all()
    if pred.class_probs is not None:
        assert pred.class_probs.shape == (5, len(CLASS_NAMES))
        torch.testing.assert_close(pred.class_probs.sum(dim=1), torch.ones(5), atol=1e-4, rtol=0)
    if pred.anomaly_map is not None:
        assert pred.anomaly_map.shape == (5, 1, size, size)
        assert 0.0 <= float(pred.anomaly_map.min()) and float(pred.anomaly_map.max()) <= 1.0
    # what the method cards promise is what comes out
    assert (pred.anomaly_map is None) == (method.card.localisation == "none")
    assert (pred.class_probs is None) == (method.card.classes == "binary only")


def test_baseline_fit_is_seeded(tiny_backbone, image_data):
    """Same seed, same shots: identical predictions (every stochastic step takes the seed)."""
    outs = [_fit_and_predict("april_gan", tiny_backbone, image_data)[2].anomaly_map for _ in range(2)]
    torch.testing.assert_close(outs[0], outs[1])


def test_context_prompts_match_plain_text_encoding(tiny_backbone):
    """With the context set to the embeddings of real words, the learnable prompt equals the encoded sentence."""
    prompts = ContextPrompts(tiny_backbone, ["object"], n_ctx=2, seed=0)
    words = tiny_backbone.text.embed_tokens(tiny_backbone.text.tokenize(["a photo object."]))[0, 1:3]
    with torch.no_grad():
        prompts.ctx.copy_(words.unsqueeze(0))
    expected = torch.nn.functional.normalize(tiny_backbone.text.encode_texts(["a photo object."]).float(), dim=-1)
    torch.testing.assert_close(prompts(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["april_gan", "winclip_plus"])
def test_anomaly_memory_needs_a_normal_shot(tiny_backbone, image_data, key):
    import dataclasses

    data = dataclasses.replace(image_data[0], labels=torch.ones_like(image_data[0].labels))
    with pytest.raises(ValueError, match="normal shot"):
        METHODS[key](tiny_backbone, CLASS_NAMES).fit(data)


def test_speed_script_reports_backbone_and_head(tmp_path):
    """benchmarks.speed runs end to end on the tiny model and writes positive timings."""
    import json

    from benchmarks import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--backbone", "UltraAD-Tiny-ViT", "--repeats", "1", "--batch", "2", "--train-shots", "0",
                       "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("batch1_backbone_s", "batch2_ultraad_s", "batch2_head_overhead_pct"):
        assert key in figures
    assert figures["batch2_backbone_s"] > 0 and figures["batch2_ultraad_s"] > 0
