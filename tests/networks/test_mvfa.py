"""MVFA pinned without the official code: tower insertion, memory scoring, losses and views on hand-built cases.

(The comparison with the authors' code on the same ViT-L-14-336 weights is a separate script outside the project;
its figures are in the benchmark's method card.)
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from monai_ultraad.networks.mvfa import (
    MVFA,
    N_VIEWS,
    all_views,
    binary_dice_loss,
    focal_loss,
    mvfa_loss,
    view,
)


@pytest.fixture(scope="module")
def _built(tiny_backbone):
    return MVFA(tiny_backbone, init_seed=0).eval()


@pytest.fixture()
def model(_built):
    """A fresh copy per test (tests change weights); the text ensemble is encoded once per module."""
    return copy.deepcopy(_built)


def _frozen_blocks(model, images, scale_at_levels=1.0):
    """The tower run block by block, the stream multiplied by ``scale_at_levels`` after every adapted block."""
    visual = model.backbone.visual
    x = visual._embeds(images)
    outs = []
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        x = block(x)
        if index in model.levels:
            outs.append(x)
            x = scale_at_levels * x
    return outs


def test_identity_blend_reproduces_the_frozen_tower(model):
    images = torch.randn(2, 3, 64, 64)
    model.blend = (1.0, 0.0, 0.0)  # adapters read the stream but give nothing back
    with torch.no_grad():
        tokens = model(images)
        frozen = _frozen_blocks(model, images)
        taps = model.backbone.visual.forward_intermediates(images, indices=[0, 1, 2, 3], normalize_intermediates=False,
                                                          output_fmt="NLC", intermediates_only=True)
    for level, stream in enumerate(frozen):
        expected = F.leaky_relu(stream @ model.seg_adapters[level].fc1.weight.T)
        torch.testing.assert_close(tokens.seg[:, level], expected, rtol=0, atol=1e-6)
        # open_clip's own raw taps (patch tokens) are the same stream: no ln_post, no projection
        torch.testing.assert_close(stream[:, 1:], taps["image_intermediates"][level], rtol=0, atol=1e-6)


def test_zero_adapters_scale_the_stream_by_the_blend(model):
    images = torch.randn(1, 3, 64, 64)
    for adapter in [*model.seg_adapters, *model.det_adapters]:
        torch.nn.init.zeros_(adapter.fc2.weight)  # out = LeakyReLU(0) = 0: x <- 0.8 x
    with torch.no_grad():
        tokens = model(images)
        frozen = _frozen_blocks(model, images, scale_at_levels=0.8)
    for level, stream in enumerate(frozen):
        torch.testing.assert_close(tokens.det[:, level], F.leaky_relu(stream @ model.det_adapters[level].fc1.weight.T),
                                   rtol=0, atol=1e-6)


def test_blend_is_point_eight_stream_plus_point_one_each_adapter(model):
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = model(images)
        visual = model.backbone.visual
        x = visual._embeds(images)
        for index, block in enumerate(visual.transformer.resblocks, start=1):  # the blend written out by hand
            x = block(x)
            level = model.levels.index(index)
            seg = model.seg_adapters[level]
            det = model.det_adapters[level]
            seg_mid, det_mid = F.leaky_relu(x @ seg.fc1.weight.T), F.leaky_relu(x @ det.fc1.weight.T)
            torch.testing.assert_close(tokens.seg[:, level], seg_mid, rtol=0, atol=1e-5)
            torch.testing.assert_close(tokens.det[:, level], det_mid, rtol=0, atol=1e-5)
            x = 0.8 * x + 0.1 * F.leaky_relu(seg_mid @ seg.fc2.weight.T) + 0.1 * F.leaky_relu(det_mid @ det.fc2.weight.T)


def test_adapter_insertion_changes_only_later_levels(model):
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        model.seg_adapters[1].fc2.weight.mul_(3.0)  # the level-2 adapter's output, blended back into the stream
        after = model(images)
    assert torch.equal(before.seg[:, :2], after.seg[:, :2]) and torch.equal(before.det[:, :2], after.det[:, :2])
    assert (before.seg[:, 2] - after.seg[:, 2]).abs().max() > 1e-3  # blocks after level 2 see the change
    assert (before.det[:, 3] - after.det[:, 3]).abs().max() > 1e-3


def test_prefix_then_adapted_tokens_equals_the_full_forward_and_gradients_reach_every_adapter(model):
    images = torch.randn(2, 3, 64, 64)
    stream = model.prefix(images)
    assert not stream.requires_grad and stream.shape == (2, 65, model.backbone.vision_width)
    tokens = model.adapted_tokens(stream)
    torch.testing.assert_close(tokens.seg, model(images).seg, rtol=0, atol=0)
    parts = mvfa_loss(model, tokens, torch.zeros(2, 1, 64, 64), torch.tensor([0, 1]))
    parts["loss"].backward()
    last_out = {id(model.seg_adapters[-1].fc2.weight), id(model.det_adapters[-1].fc2.weight)}
    for p in model.trainable_parameters():
        if id(p) in last_out:  # the last adapters' outputs feed no later block (as in the official code)
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_few_shot_map_is_min_over_memory_of_one_minus_cosine(model):
    dim, n_levels = model.backbone.embed_dim, len(model.levels)
    e = torch.eye(dim)
    tokens = torch.zeros(1, n_levels, 65, dim)
    tokens[0, :, 1:] = e[4] * 2.0  # every patch along e4 ...
    for patch, axis in ((0, 0), (7, 1), (56, 2), (63, 3)):  # ... except the four grid corners
        tokens[0, :, 1 + patch] = e[axis] * 5.0  # any length: cosine
    root3 = math.sqrt(3.0)
    memory = torch.stack([e[0], -e[1], 0.5 * e[1] + 0.5 * root3 * e[2], e[4]])  # (4, dim)
    maps = model.few_shot_maps(tokens, memory.expand(n_levels, -1, -1))
    grid = maps[0, 0]  # corners of an align_corners=True upsampling are the grid's corner patches
    assert float(grid[0, 0]) == pytest.approx(0.0, abs=1e-6)  # patch 0 is in the memory
    assert float(grid[0, -1]) == pytest.approx(0.5, abs=1e-6)  # patch 7: cos 0.5 beats -1 (1 - cos = 2)
    assert float(grid[-1, 0]) == pytest.approx(1.0 - 0.5 * root3, abs=1e-6)  # patch 56
    assert float(grid[-1, -1]) == pytest.approx(1.0, abs=1e-6)  # patch 63 is orthogonal to every memory entry
    assert float(grid[32, 32]) == pytest.approx(0.0, abs=1e-6)  # the middle: e4 patches, e4 in the memory
    chunked = model.few_shot_maps(tokens, memory.expand(n_levels, -1, -1), chunk=1)
    torch.testing.assert_close(chunked, maps, rtol=0, atol=0)


def test_losses_on_hand_computed_cases(model):
    probs = torch.full((1, 2, 2, 2), 0.5)
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    eps = 1e-5
    assert float(focal_loss(probs, mask)) == pytest.approx(-((0.5 - eps) ** 2) * math.log(0.5 + eps), rel=1e-6)
    p = torch.tensor([[[0.9, 0.1], [0.2, 0.0]]])
    focal = focal_loss(torch.stack([1 - p, p], dim=1), mask)
    pt = torch.tensor([0.9, 0.9, 0.8, 1.0]) * (1 - eps) + torch.tensor([0.1, 0.1, 0.2, 0.0]) * eps + eps
    assert float(focal) == pytest.approx(float((-(1 - pt) ** 2 * pt.log()).mean()), rel=1e-6)
    # Dice (smooth 1): 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert float(binary_dice_loss(probs[:, 1], mask[:, 0])) == pytest.approx(0.5)
    tokens = model(torch.randn(2, 3, 64, 64))
    labels = torch.tensor([0, 1])
    probs_det = model.detection_probs(tokens.det)
    bce = mvfa_loss(model, tokens, None, labels)["det"]
    expected = sum(F.binary_cross_entropy(probs_det[:, i], labels.float()) for i in range(len(model.levels)))
    assert float(bce.detach()) == pytest.approx(float(expected), rel=1e-6)
    model.det_loss = "official"  # their BCEWithLogitsLoss applied to the probability
    quirk = mvfa_loss(model, tokens, None, labels)["det"]
    sig = torch.sigmoid(probs_det)
    by_hand = -(labels * sig.log().T + (1 - labels) * (1 - sig).log().T).mean(dim=1).sum()
    assert float(quirk) == pytest.approx(float(by_hand), rel=1e-6)
    parts = mvfa_loss(model, tokens, torch.zeros(2, 1, 64, 64), labels)
    assert set(parts) == {"det", "focal", "dice", "loss"}
    assert float(parts["loss"]) == pytest.approx(float(parts["det"] + parts["focal"] + parts["dice"]), rel=1e-6)


def test_views_are_the_authors_eleven_in_order():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    views = all_views(x)
    assert views.shape == (N_VIEWS * 2, 1, 8, 8) and N_VIEWS == 11
    assert torch.equal(views[:2], x)
    assert torch.equal(views[18:20], x.flip(-1)) and torch.equal(views[20:22], x.flip(-2))
    const = torch.full((1, 3, 8, 8), 0.3)
    for i in range(1, 9):  # rotations and translations with reflection padding keep a constant image constant
        torch.testing.assert_close(view(const, i), const, rtol=0, atol=1e-6)
    rot = view(x[:1], 4)  # +pi/8 differs from -pi/8
    assert not torch.allclose(rot, view(x[:1], 1))
    with pytest.raises(IndexError):
        view(x, N_VIEWS)


def test_scoring_fuses_normalised_branches_and_takes_the_max(model):
    images = torch.randn(3, 3, 64, 64)
    model.set_memory(model.prefix(all_views(images[:1])))
    assert model.seg_memory.shape == (4, 11 * 65, model.backbone.embed_dim)  # patch and class tokens of every view
    tokens = model(images)
    raw = model.raw_branches(tokens)
    stats = model.calibrate([raw])
    zs, fs = raw["zero_shot_map"], raw["few_shot_map"]
    assert stats.tolist() == pytest.approx([float(zs.min()), float(zs.max()), float(fs.min()), float(fs.max())])
    out = model.score_tokens(tokens)
    fused = 0.5 * (zs - zs.min()) / (zs.max() - zs.min()) + 0.5 * (fs - fs.min()) / (fs.max() - fs.min())
    torch.testing.assert_close(out.anomaly_map[:, 0], fused, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.anomaly_score, fused.flatten(1).amax(1), rtol=0, atol=1e-6)
    # the same images' own memory tokens are in the bank: image 0's few-shot map is 0 everywhere
    assert float(fs[0].abs().max()) < 1e-5 and float(fs[1:].min()) > 0


def test_head_state_round_trip_keeps_memory_and_statistics(model, tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    fresh = copy.deepcopy(model)  # empty memory, default statistics
    model.set_memory(model.prefix(images[:1]))
    model.calibrate([model.raw_branches(model(images))])
    other = fresh
    for p in other.trainable_parameters():
        torch.nn.init.normal_(p)
    other.load_head_state_dict(model.head_state_dict())
    torch.testing.assert_close(other.score(images).anomaly_map, model.score(images).anomaly_map, rtol=0, atol=0)
    assert not any(k.startswith("backbone.") for k in model.head_state_dict())
