"""The baselines compute what their papers and reference code compute: small hand-checkable cases.

WinCLIP's pieces against numbers worked out by hand (and anomalib's documented example), April-GAN's raw taps and
loss, Tip-Adapter-F's schedule, CoOp's optimiser; parity of WinCLIP with anomalib itself is
``benchmarks/winclip_parity.py`` (figures in benchmarks/results/winclip-parity/), of April-GAN and CoOp / CoCoOp
with their official code ``benchmarks/april_gan_parity.py`` and ``benchmarks/coop_parity.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.methods import winclip
from benchmarks.methods.anomaly import focal_loss
from benchmarks.methods.common import train_minibatches
from benchmarks.methods.derived import raw_taps


def test_window_indices_of_a_3x3_grid():
    assert winclip.window_indices(3, 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert winclip.window_indices(14, 3).shape == (144, 9)  # ViT-B-16 at 224 px: 12 x 12 mid-scale windows


def test_harmonic_aggregation_by_hand():
    """Windows of a 3x3 grid scored 1, 3/4, 1/2, 1/4 (top-left, top-right, bottom-left, bottom-right): the centre
    patch, covered by all four, gets 4 / (1 + 4/3 + 2 + 4) = 0.48; a corner patch its one window's score."""
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    out = winclip.harmonic_aggregation(scores, winclip.window_indices(3, 2), 9).view(3, 3)
    expected = torch.tensor([[1.0, 2 / (1 + 4 / 3), 0.75],
                             [2 / (1 + 2), 4 / (1 + 4 / 3 + 2 + 4), 2 / (4 / 3 + 4)],
                             [0.5, 2 / (2 + 4), 0.25]])
    torch.testing.assert_close(out, expected)
    # a window scoring 0 makes the harmonic mean of the patches it covers 0 (anomalib: nan_to_num(posinf=0))
    zero = winclip.harmonic_aggregation(torch.tensor([[0.0, 1.0, 1.0, 1.0]]), winclip.window_indices(3, 2), 9)
    assert zero.view(3, 3)[0, 0] == 0 and zero.view(3, 3)[1, 1] == 0 and zero.view(3, 3)[2, 2] == 1


def _text_and_windows(grid: int, hot: tuple[int, int]):
    """Orthogonal normal/abnormal texts; every window embedding normal except those containing patch ``hot``."""
    text = torch.eye(2, 4)
    windows = []
    for s in winclip.SCALES:
        index = winclip.window_indices(grid, s)
        covers = (index == hot[0] * grid + hot[1]).any(dim=1)
        emb = torch.where(covers[:, None], text[1], text[0]).expand(1, -1, -1).clone()
        windows.append(emb)
    return text, windows


def test_zero_shot_map_peaks_where_the_abnormal_windows_are_not_transposed():
    """An abnormal patch at row 2, column 5 of an 8x8 grid: the map's maximum is there, not at (5, 2). (Only at
    that patch do all covering windows contain it; its neighbours mix normal and abnormal windows.)"""
    grid = 8
    text, windows = _text_and_windows(grid, (2, 5))
    image_score = torch.tensor([0.5])
    amap = winclip.zero_shot_map(image_score, windows, text, grid).view(grid, grid)
    assert divmod(int(amap.argmax()), grid) == (2, 5)
    assert amap[2, 5] > 0.5 > amap[5, 2]
    # the image score is one more scale of the harmonic mean: (1 + 2) / (1/0.5 + 1 + 1) at the hot patch
    p = (1 / 0.07 * 1.0)  # cos 1 with the abnormal text, 0 with the normal
    hot = torch.tensor([0.0, p]).softmax(0)[1]
    torch.testing.assert_close(amap[2, 5], 3 / (1 / 0.5 + 2 / hot))


def test_few_shot_map_is_zero_on_the_reference_and_marks_the_odd_patch():
    grid = 5
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(1, grid * grid, 8, generator=g)
    windows = [torch.randn(1, (grid - s + 1) ** 2, 6, generator=g) for s in winclip.SCALES]
    memory = [patches[0]] + [w[0] for w in windows]
    same = winclip.few_shot_map(patches, windows, memory, grid)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)
    odd = patches.clone()
    odd[0, 2 * grid + 3] = -odd[0, 2 * grid + 3]  # cosine -1 with itself, unlike every other reference patch
    amap = winclip.few_shot_map(odd, windows, memory, grid)
    assert int(amap.argmax()) == 2 * grid + 3


def test_winclip_plus_averages_the_zero_and_few_shot_parts():
    grid = 4
    text, windows = _text_and_windows(grid, (0, 0))
    patches = torch.randn(1, grid * grid, 3)
    memory = [patches[0]] + [w[0] for w in windows]  # a perfect reference: the visual part is 0
    image_emb = text[1:].clone()
    zs_score, zs_map = winclip.winclip_scores(image_emb, windows, patches, text, grid)
    fs_score, fs_map = winclip.winclip_scores(image_emb, windows, patches, text, grid, memory)
    torch.testing.assert_close(fs_map, zs_map / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(fs_score, zs_score / 2, atol=1e-6, rtol=0)


def test_encode_windows_equals_the_tower_on_the_window_alone(tiny_backbone):
    """A window's embedding is the class output of the tower run on [class token, the window's patches] with their
    own positional embeddings: rebuild one by hand from open_clip's modules."""
    visual = tiny_backbone.visual
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size, generator=torch.Generator().manual_seed(1))
    image_emb, windows, patches = winclip.encode_windows(tiny_backbone, images)
    feats = tiny_backbone.encode_image(images)
    torch.testing.assert_close(image_emb, feats.cls_token, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, feats.patch_tokens[:, -1], atol=1e-5, rtol=1e-5)
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
    grid = tiny_backbone.grid_size
    w = 3  # the 4th 2x2 window: top-left patch (0, 3)
    keep = [0] + [1 + i for i in winclip.window_indices(grid, 2)[w].tolist()]
    assert keep[1:] == [1 + p for p in (3, 4, 3 + grid, 4 + grid)]  # +1: the class token comes first
    by_hand = visual.ln_post(visual.transformer(visual.ln_pre(x[:, keep]))[:, 0]) @ visual.proj
    torch.testing.assert_close(windows[0][:, w], by_hand, atol=1e-5, rtol=1e-5)


def test_april_gan_reads_the_raw_residual_taps(tiny_backbone):
    """The cached taps are after the final LayerNorm; April-GAN's are before it: ln_post(raw) == cached."""
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    cls, raw = raw_taps(tiny_backbone)(images)
    feats = tiny_backbone.encode_image(images)
    torch.testing.assert_close(tiny_backbone.visual.ln_post(raw), feats.patch_tokens, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(raw, feats.patch_tokens, atol=1e-2)
    torch.testing.assert_close(cls, feats.cls_token)


def test_focal_loss_by_hand():
    """Equal logits: p_t = 1/2 everywhere, loss = (1/2)^2 * ln 2; a confident right pixel costs nearly nothing."""
    logits = torch.zeros(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert focal_loss(logits, mask).item() == pytest.approx(0.25 * math.log(2))
    sure = torch.stack([1 - mask[:, 0], mask[:, 0]], 1) * 20.0
    assert focal_loss(sure, mask).item() < 1e-10
    assert focal_loss(-sure, mask).item() > 10  # confident and wrong: ~(1)^2 * 20 per pixel


def test_coop_schedule_warm_up_then_cosine():
    """Dassl's schedule as CoOp / CoCoOp use it (its ConstantWarmupScheduler, WARMUP_RECOUNT True, measured in
    benchmarks/coop_parity.py): epoch 0 at 1e-5, epoch e >= 1 at the cosine's value for e - 1, so epoch 1 at the
    base lr and the last epoch not at 0."""
    seen = []
    param = torch.nn.Parameter(torch.zeros(1))

    def loss_fn(idx):
        return (param * 0.0).sum() + param.sum() ** 2

    original = torch.optim.SGD.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.SGD.step = step
    try:
        train_minibatches([param], loss_fn, n=1, epochs=5, seed=0, batch_size=1, lr=2e-3, weight_decay=5e-4,
                          sgd_paper=True)
    finally:
        torch.optim.SGD.step = original
    expected = [1e-5] + [2e-3 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2 for e in range(1, 5)]
    assert expected[1:3] == pytest.approx([2e-3, 0.0018090169943749475])  # Dassl's lrs for MAX_EPOCH 5, by hand
    assert seen == pytest.approx(expected)


def test_tip_adapter_f_keys_are_trained_not_renormalised(tiny_backbone):
    """Tip-Adapter-F's adapter is a linear layer initialised with the shots' features: after training its rows are
    no longer unit vectors (the official code never renormalises them)."""
    from benchmarks.methods import METHODS
    from tests.benchmarks.test_benchmark_methods import _features, _fit_data

    method = METHODS["tip_adapter_f"](tiny_backbone, ("normal", "benign", "malignant"))
    info = method.fit(_fit_data(tiny_backbone))
    norms = method.keys.detach().norm(dim=-1)
    assert (norms - 1).abs().max() > 1e-4, norms
    assert 1 <= info["best_epoch"] <= 20 and 0.1 <= info["alpha"] < 3 and 0.1 <= info["beta"] < 7
    assert method.predict(_features(tiny_backbone, 2, 3)).class_probs.shape == (2, 3)


def test_paper_numbers_sit_beside_ours_on_busi():
    from benchmarks.report import paper_markdown

    run = {"targets": {"bus_uclm_test": "", "busi": ""}, "shots": [4, 16], "random_weights": False}
    summary = {"busi": {"UltraAD": {"4": {"image_auroc": {"mean": 0.5, "std": 0.0, "n": 1}},
                                    "16": {"pixel_auroc": {"mean": 0.25, "std": 0.0, "n": 1}}},
                        "linear probe": {"4": {}}}}
    lines = paper_markdown(run, summary)
    assert "ours: `busi`" in lines[0] and not any(line.startswith(">") for line in lines)  # same set: no caveat
    rows = [line for line in lines if line.startswith("| UltraAD")]
    assert rows == ["| UltraAD | 4 | 0.870 / 0.500 | 0.686 / – | 0.883 / – |",
                    "| UltraAD | 16 | 0.914 / – | 0.738 / – | 0.918 / 0.250 |"]
    assert not any("linear probe" in line for line in lines)  # the paper has no linear probe row
    other = paper_markdown({**run, "targets": {"bus_bra": ""}, "random_weights": True},
                           {"bus_bra": summary["busi"]})
    assert other[2].startswith("> Ours are on `bus_bra`, not BUSI, with random weights")


def test_gaussian_smooth_keeps_a_constant_map_and_equals_scipy():
    """April-GAN's sigma-4 smoothing is scipy.ndimage.gaussian_filter's (mirrored edges): a constant map stays
    constant up to its border (a zero-padded filter, MONAI's GaussianFilter, halves the corners), and an impulse
    spreads as the sampled kernel exp(-x^2 / 32), normalised over its 33 taps, in each direction."""
    from scipy.ndimage import gaussian_filter

    from benchmarks.methods.common import gaussian_smooth

    flat = gaussian_smooth(torch.full((1, 1, 40, 40), 0.7, dtype=torch.float64))
    assert torch.allclose(flat, torch.full_like(flat, 0.7), atol=1e-12)
    impulse = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
    impulse[0, 0, 20, 20] = 1.0
    k = torch.exp(-torch.arange(-16, 17, dtype=torch.float64) ** 2 / 32)
    k = k / k.sum()
    assert torch.allclose(gaussian_smooth(impulse)[0, 0, 4:37, 4:37], torch.outer(k, k), atol=1e-15)
    x = torch.rand(2, 1, 37, 45, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.from_numpy(gaussian_filter(x[1, 0].numpy(), sigma=4))
    assert torch.allclose(gaussian_smooth(x)[1, 0], expected, atol=1e-12)
