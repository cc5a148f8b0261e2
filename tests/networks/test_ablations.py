"""Each ablation switch of UltraAD changes what the model computes (not only that it still runs): with the very same
(trained-like) learnable weights, switching one part off changes the heatmap or the class probabilities, and switching nothing off
changes nothing."""

from __future__ import annotations

import pytest
import torch

from monai_ultraad.networks import UltraAD

SWITCHES = ["image_aware_prompts", "use_memory", "use_fusion", "lesion_aware_text"]


@pytest.fixture(scope="module")
def data(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    shot_features = tiny_backbone.encode_image(torch.rand(3, 3, 64, 64, generator=g))
    return images, shot_features, torch.tensor([0, 1, 2])


def _run(model, data):
    images, shot_features, labels = data
    model.setup_memory(shot_features, labels)
    with torch.no_grad():
        out = model(images)
    return out.anomaly_map, out.class_probs


def _same_weights(source: UltraAD, target: UltraAD) -> None:
    """Copy the learnable parameters ``target`` shares with ``source``; buffers (class text) stay as built."""
    params = dict(target.named_parameters())
    shared = {k: v for k, v in source.state_dict().items() if k in params and params[k].shape == v.shape}
    assert shared, "no shared parameters"
    target.load_state_dict(shared, strict=False)


@pytest.fixture(scope="module")
def full(tiny_backbone, data):
    torch.manual_seed(0)
    model = UltraAD(tiny_backbone).eval()
    # As after training: some parts start as the identity (the fusion's zero-initialised output projection), so the
    # learnable weights are moved off their initial values, the same way for every switch.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, _run(model, data)


def test_no_switch_changes_nothing(tiny_backbone, data, full):
    model, (heat, probs) = full
    again = UltraAD(tiny_backbone).eval()
    _same_weights(model, again)
    heat2, probs2 = _run(again, data)
    torch.testing.assert_close(heat2, heat)
    torch.testing.assert_close(probs2, probs)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_output(tiny_backbone, data, full, switch):
    model, (heat, probs) = full
    ablated = UltraAD(tiny_backbone, **{switch: False}).eval()
    _same_weights(model, ablated)
    heat2, probs2 = _run(ablated, data)
    heat_change = float((heat2 - heat).abs().max())
    probs_change = float((probs2 - probs).abs().max())
    assert max(heat_change, probs_change) > 1e-4, f"{switch}=False left the output unchanged"
