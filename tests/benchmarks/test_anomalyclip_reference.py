"""AnomalyCLIP's pieces against values worked out by hand: V-V attention, the DPAM path, the deep text prompts,
the reference's focal loss and Dice, and the map's orientation. Parity with the reference code itself is
``benchmarks/anomalyclip_parity.py`` (figures in benchmarks/results/anomalyclip-parity/)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.methods import anomalyclip as ac


def test_vv_attention_by_hand():
    """One head, identity value and output projections, two tokens x = [[1, 0], [0, 2]]: v = x, so the weights are
    softmax(v v^T / sqrt 2) = rows softmax([1, 0] / sqrt 2) and softmax([0, 4] / sqrt 2); queries and keys unused."""
    attn = nn.MultiheadAttention(2, 1, batch_first=True)
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.cat([torch.randn(4, 2), torch.eye(2)]))  # q, k random: must not matter
        attn.in_proj_bias.zero_()
        attn.out_proj.weight.copy_(torch.eye(2))
        attn.out_proj.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    r = 1 / math.sqrt(2)
    a0 = torch.tensor([math.exp(r), 1.0]) / (math.exp(r) + 1)
    a1 = torch.tensor([1.0, math.exp(4 * r)]) / (1 + math.exp(4 * r))
    expected = torch.stack([a0[0] * x[0, 0] + a0[1] * x[0, 1], a1[0] * x[0, 0] + a1[1] * x[0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(ac.vv_attention(attn, x)[0], expected)


def _tower(backbone, images):
    """The plain tower run block by block: the residual stream after each block (index 0: the embedded input)."""
    visual = backbone.visual
    states = [visual._embeds(images)]
    for block in visual.transformer.resblocks:
        states.append(block(states[-1]))
    return states


def test_dpam_path_reads_the_original_path_and_skips_the_mlp(tiny_backbone):
    """DPAM from block n-1 of n: the second path at block n is x_{n-2} + VV_{n-1}(ln(x_{n-2})) + VV_n(ln(x_{n-1}))
    with x the ORIGINAL path; the global embedding is the original last class token times proj, no ln_post."""
    visual = tiny_backbone.visual
    blocks = visual.transformer.resblocks
    n = len(blocks)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size,
                         generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = _tower(tiny_backbone, images)
        image, tokens = ac.dpam_features(tiny_backbone, images, taps=(n - 2, n), start=n - 1)

        def vv(number, state):
            block = blocks[number - 1]
            return ac.vv_attention(block.attn, block.ln_1(state))

        path = x[n - 2] + vv(n - 1, x[n - 2]) + vv(n, x[n - 1])
        torch.testing.assert_close(tokens[:, 1], visual.ln_post(path) @ visual.proj, atol=1e-5, rtol=1e-5)
        # before the DPAM blocks a tap is the plain tower's
        torch.testing.assert_close(tokens[:, 0], visual.ln_post(x[n - 2]) @ visual.proj, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(image, x[n][:, 0] @ visual.proj, atol=1e-5, rtol=1e-5)
    assert ac.dpam_start(24) == 6 and ac.dpam_start(12) == 3 and ac.dpam_start(4) == 1  # ViT-L: blocks 6-24


def test_deep_prompts_replace_tokens_one_to_four_at_block_two(tiny_backbone):
    """The text by hand: [sot, 12 context, suffix] + positions, block 1, tokens 1..4 replaced by the deep tokens,
    block 2, ln_final at the end-of-text token, projection. Without deep tokens (depth 1) the package's own
    encoder of the same embeddings gives the same text."""
    prompts = ac.AnomalyCLIPPrompts(tiny_backbone, seed=1)
    encoder = tiny_backbone.text
    blocks = encoder.transformer.resblocks
    assert prompts.deep.shape == (len(blocks) - 1, 4, encoder.width)  # depth 9 capped at the tower's 2 blocks
    with torch.no_grad():
        prompts.deep.normal_(0.0, 1.0)
        emb = torch.cat([prompts.base[:, :1], prompts.ctx, prompts.base[:, 13:]], dim=1)[:, :prompts.length]
        mask = encoder.attn_mask[:prompts.length, :prompts.length]
        x = blocks[0](emb + encoder.positional_embedding[:prompts.length], attn_mask=mask)
        x = torch.cat([x[:, :1], prompts.deep[0].expand(2, -1, -1), x[:, 5:]], dim=1)
        x = blocks[1](x, attn_mask=mask)
        expected = F.normalize(encoder.project(x[torch.arange(2), prompts.eot]), dim=-1)
        torch.testing.assert_close(prompts(), expected)
        shallow = ac.AnomalyCLIPPrompts(tiny_backbone, depth=1, seed=1)
        assert shallow.deep.numel() == 0
        plain = F.normalize(encoder.encode_embeddings(emb, shallow.eot), dim=-1)
        torch.testing.assert_close(shallow(), plain)
        assert (prompts() - shallow()).abs().max() > 1e-3  # the deep tokens do change the text
    assert prompts.eot.tolist() == [15, 16]  # sot, 12 X, "object" / "damaged object", ".", then end-of-text


def test_focal_and_dice_by_hand():
    """The reference's focal loss on probabilities: one pixel, p = (0.25, 0.75), target abnormal: one-hot clamped
    to (1e-5, 1 - 1e-5), p_t = 1e-5 * 0.25 + (1 - 1e-5) * 0.75 + 1e-5, loss -(1 - p_t)^2 log p_t. Dice of a 2x2
    map at 0.5 against one lesion pixel: 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5."""
    prob = torch.tensor([0.25, 0.75], dtype=torch.float64).view(1, 2, 1, 1)  # float64: the clamp moves p_t by 5e-6
    pt = 1e-5 * 0.25 + (1 - 1e-5) * 0.75 + 1e-5
    torch.testing.assert_close(ac.focal_loss(prob, torch.ones(1, 1, 1, 1)),
                               torch.tensor(-(1 - pt) ** 2 * math.log(pt), dtype=torch.float64), rtol=1e-9, atol=0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(ac.binary_dice(torch.full((1, 1, 2, 2), 0.5), mask), torch.tensor(0.5))


def _aligned_case(hot: int):
    """Orthogonal [normal, abnormal] texts; a 2x2 grid whose patch ``hot`` (raster order) is the abnormal text."""
    text = torch.eye(2, 4)
    tokens = text[0].repeat(1, 1, 5, 1)  # (B, L, 1 + N, D), the class token first
    tokens[0, 0, 1 + hot] = text[1]
    return text, tokens


def test_map_orientation_and_score():
    """The abnormal patch at row 0, column 1 lights the top-right of the map, not the bottom-left (a transpose);
    the image score is softmax(cos / 0.07)[abnormal]."""
    text, tokens = _aligned_case(hot=1)
    image = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    score, amap = ac.anomalyclip_outputs(image, tokens, text, size=32, sigma=1.0)
    assert amap[0, :16, 16:].mean() > 0.5 > amap[0, 16:, :16].mean()
    torch.testing.assert_close(score, torch.tensor([0.5]))  # equally close to both prompts


def test_loss_weights_and_mask_alignment():
    """loss = 4 x (focal + Dice(abnormal) + Dice(normal)) + CE(cos / 0.07); the mask where the abnormal patch is
    gives a lower loss than its transpose."""
    text, tokens = _aligned_case(hot=1)
    image, labels = text[1:2], torch.tensor([1])
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, 16:] = 1.0
    prob = ac.patch_probabilities(tokens[:, 0], text, 32)
    local = ac.focal_loss(prob, mask) + ac.binary_dice(prob[:, 1:], mask) + ac.binary_dice(prob[:, :1], 1 - mask)
    ce = F.cross_entropy(torch.tensor([[0.0, 1 / 0.07]]), labels)
    torch.testing.assert_close(ac.anomalyclip_loss(image, tokens, text, labels, mask), 4 * local + ce)
    assert ac.anomalyclip_loss(image, tokens, text, labels, mask) < \
        ac.anomalyclip_loss(image, tokens, text, labels, mask.transpose(-1, -2))
