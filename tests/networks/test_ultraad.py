from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from monai_ultraad.errors import WeightsError
from monai_ultraad.losses import UltraADLoss
from monai_ultraad.networks import (
    FewShotMemoryBank,
    ImageAwarePromptLearner,
    MultiLevelPatchAdapter,
    PatchLanguageFusion,
    UltraAD,
    encode_class_prompts,
)
from monai_ultraad.networks.memory import ClassTokenMiniNet


@pytest.fixture()
def model(tiny_backbone):
    torch.manual_seed(0)
    m = UltraAD(tiny_backbone)
    feats = tiny_backbone.encode_image(torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    m.setup_memory(feats, torch.tensor([0, 0, 1, 1, 2, 2]))
    return m


def test_output_contract(model):
    out = model(torch.randn(3, 3, 64, 64))
    assert out.anomaly_map.shape == (3, 1, 64, 64)
    assert out.class_logits.shape == (3, 3)
    assert out.anomaly_score.shape == (3,)
    assert out.layer_logits.shape == (3, 4, 2, 8, 8)
    assert 0 <= out.anomaly_map.min() and out.anomaly_map.max() <= 1
    assert 0 <= out.anomaly_score.min() and out.anomaly_score.max() <= 1
    torch.testing.assert_close(out.class_probs.sum(-1), torch.ones(3))


def test_forward_equals_head_on_cached_features(model, tiny_backbone):
    x = torch.randn(2, 3, 64, 64)
    a = model(x)
    b = model.forward_features(tiny_backbone.encode_image(x))
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.class_logits, b.class_logits)


def test_mask_guided_score(model):
    out = model(torch.randn(2, 3, 64, 64))
    p_abnormal = 1 - out.class_probs[:, 0]
    expected = 0.5 * (p_abnormal + out.anomaly_map.flatten(1).amax(1))
    torch.testing.assert_close(out.anomaly_score, expected)


def test_every_learnable_part_gets_gradient(model):
    out = model(torch.randn(4, 3, 64, 64))
    loss = UltraADLoss()(out, (torch.rand(4, 1, 64, 64) > 0.7).float(), torch.tensor([0, 1, 2, 1]))["loss"]
    loss.backward()
    # fusion out_proj is zero-initialised, so its q/k/v get gradient only after the first step: check out_proj
    names = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("mininet.net.2.weight", "prompt_learner.ctx", "prompt_learner.instance_proj.weight",
                 "adapter.linears.0.weight", "adapter.linears.3.weight", "memory.keys", "fusion.attention.out_proj.weight"):
        assert part in names, part
    assert not any(p.grad is not None for p in model.backbone.parameters())


def test_zero_initialised_parts_start_from_clip(tiny_backbone):
    """MiniNet and fusion start as identities: few-shot training starts from CLIP's zero-shot behaviour."""
    x = F.normalize(torch.randn(3, tiny_backbone.embed_dim), dim=-1)
    torch.testing.assert_close(ClassTokenMiniNet(tiny_backbone.embed_dim)(x), x)
    protos = F.normalize(torch.randn(3, 2, tiny_backbone.embed_dim), dim=-1)
    fused = PatchLanguageFusion(tiny_backbone.embed_dim, 4)(protos, torch.randn(3, 16, tiny_backbone.embed_dim))
    torch.testing.assert_close(fused, protos)


def test_fusion_heads_must_divide_dim():
    with pytest.raises(ValueError, match="must divide"):
        PatchLanguageFusion(32, 5)


def test_prompt_learner_is_image_aware(tiny_backbone):
    torch.manual_seed(0)
    learner = ImageAwarePromptLearner(tiny_backbone.text, tiny_backbone.embed_dim, n_ctx=3)
    shared = F.normalize(torch.randn(2, tiny_backbone.embed_dim), dim=-1)
    text = learner(shared)
    assert text.shape == (2, 2, tiny_backbone.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2, 2))
    assert not torch.allclose(text[0], text[1])  # different images -> different prompts
    fixed = ImageAwarePromptLearner(tiny_backbone.text, tiny_backbone.embed_dim, image_aware=False)
    f = fixed(shared)
    torch.testing.assert_close(f[0], f[1])  # ablation: the same prompts for every image
    assert not list(fixed.parameters())


def test_class_prompts_are_frozen_and_normalised(tiny_backbone):
    emb = encode_class_prompts(tiny_backbone.text)
    assert emb.shape == (3, tiny_backbone.embed_dim) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="no prompt text"):
        encode_class_prompts(tiny_backbone.text, {"normal": ["x"]})


def test_memory_bank_leave_one_out():
    text = F.normalize(torch.randn(3, 8), dim=-1)
    bank = FewShotMemoryBank(text, alpha=10.0, centered=False, balanced_start=False)  # the paper's literal form
    keys = F.normalize(torch.randn(3, 8), dim=-1)
    bank.setup(keys, torch.tensor([0, 1, 2]))
    with_self = bank(keys)
    without_self = bank(keys, exclude=torch.tensor([0, 1, 2]))
    text_only = 100 * keys @ text.t()
    # each sample's own entry has affinity exp(0) = 1 and would dominate its class
    assert torch.all(torch.diagonal(with_self - text_only) > torch.diagonal(without_self - text_only))
    torch.testing.assert_close(without_self, text_only + 10 * (torch.exp(-5.5 * (1 - keys @ keys.t())) * (1 - torch.eye(3))))
    off = FewShotMemoryBank(text, use_memory=False)
    off.setup(keys, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(off(keys), off.log_term_weights.exp()[0] * text_only + off.class_bias)
    with pytest.raises(ValueError):
        bank.setup(keys, torch.tensor([0, 1, 5]))


def test_memory_bank_centred_affinities_and_balanced_start():
    """Affinities are taken around the shots' mean; the set-up fit leaves the shots' mean logits class-balanced."""
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    base = F.normalize(torch.randn(8), dim=0)
    labels = torch.arange(3).repeat_interleave(4)
    # a narrow cone (cosines ~0.99) with a class direction, as CLIP class tokens of ultrasound images are
    keys = F.normalize(base + 0.1 * F.normalize(torch.randn(3, 8), dim=-1)[labels] + 0.02 * torch.randn(12, 8), dim=-1)
    bank = FewShotMemoryBank(text, alpha=10.0, beta=5.5)
    bank.setup(keys, labels)
    torch.testing.assert_close(bank.center, keys.mean(0))
    text_term, memory_term = bank.terms(keys, exclude=torch.arange(12))
    centred = F.normalize(keys - keys.mean(0), dim=-1)
    expected = 10 * (torch.exp(-5.5 * (1 - centred @ centred.t())) * (1 - torch.eye(12))) @ F.one_hot(labels).float() / 4
    torch.testing.assert_close(memory_term, expected)
    w = bank.log_term_weights.exp()
    torch.testing.assert_close(bank(keys, exclude=torch.arange(12)), w[0] * text_term + w[1] * memory_term + bank.class_bias)
    # fitted to the shots: leave-one-out they are classified (the literal, uncentred bank calls them all one class)
    assert (bank(keys, exclude=torch.arange(12)).argmax(-1) == labels).float().mean() >= 0.9
    literal = FewShotMemoryBank(text, alpha=10.0, beta=5.5, centered=False, balanced_start=False)
    literal.setup(keys, labels)
    assert (literal(keys, exclude=torch.arange(12)).argmax(-1) == labels).float().mean() <= 0.5


def test_adapter_checks_layer_count():
    adapter = MultiLevelPatchAdapter(2, 16, 8)
    out = adapter(torch.randn(1, 2, 4, 16))
    assert len(out) == 2 and out[0].shape == (1, 4, 8)
    torch.testing.assert_close(out[1].norm(dim=-1), torch.ones(1, 4))
    with pytest.raises(ValueError, match="2 layers"):
        adapter(torch.randn(1, 3, 4, 16))


@pytest.mark.parametrize(
    "flags",
    [dict(image_aware_prompts=False), dict(use_memory=False), dict(use_fusion=False), dict(lesion_aware_text=False)],
)
def test_ablations_run(tiny_backbone, flags):
    m = UltraAD(tiny_backbone, **flags)
    m.setup_memory(tiny_backbone.encode_image(torch.randn(3, 3, 64, 64)), torch.tensor([0, 1, 2]))
    out = m(torch.randn(2, 3, 64, 64))
    assert out.anomaly_map.shape == (2, 1, 64, 64)
    assert (m.fusion is None) == (flags.get("use_fusion") is False)


def test_head_state_roundtrip(model, tiny_backbone):
    with torch.no_grad():
        model.prompt_learner.ctx.add_(1.0)
    state = model.head_state_dict()
    assert not any(k.startswith("backbone.") for k in state)
    other = UltraAD(tiny_backbone)
    other.load_head_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(other(x).class_logits, model(x).class_logits)
    assert other.memory.size == 6


def test_head_state_from_before_the_class_fixes_loads_as_it_was(model, tiny_backbone):
    """A checkpoint written before the centred memory, term weights and calibration existed loads, and computes
    the earlier formula: text at scale 100 plus alpha times the mean raw affinity, no bias, no temperature."""
    old = {k: v for k, v in model.head_state_dict().items()
           if k not in ("memory.center", "memory.log_term_weights", "memory.class_bias", "calibration.temperature",
                        "calibration.bias")}
    loaded = UltraAD(tiny_backbone)
    loaded.load_head_state_dict(old)
    feats = tiny_backbone.encode_image(torch.randn(2, 3, 64, 64))
    shared = loaded.mininet(feats.cls_token)
    keys = F.normalize(loaded.memory.keys, dim=-1)
    values = F.one_hot(loaded.memory.labels, 3).float()
    expected = 100 * shared @ loaded.memory.class_text.t() + 10 * torch.exp(-5.5 * (1 - shared @ keys.t())) @ values / values.sum(0)
    torch.testing.assert_close(loaded.eval().forward_features(feats).class_logits, expected)


def test_head_state_from_other_configuration_is_rejected(model, tiny_backbone):
    state = model.head_state_dict()
    state.pop("prompt_learner.ctx")
    with pytest.raises(WeightsError, match="does not fit"):
        UltraAD(tiny_backbone).load_head_state_dict(state)


def test_class_names_must_start_with_normal(tiny_backbone):
    with pytest.raises(ValueError, match="normal"):
        UltraAD(tiny_backbone, class_names=("benign", "malignant"))


def test_loss_parts_and_weights(model):
    out = model(torch.randn(2, 3, 64, 64))
    masks = torch.zeros(2, 1, 64, 64)
    masks[1, :, 20:40, 20:40] = 1
    labels = torch.tensor([0, 2])
    parts = UltraADLoss()(out, masks, labels)
    torch.testing.assert_close(parts["loss"], parts["seg_loss"] + parts["cls_loss"])
    seg_only = UltraADLoss(cls_weight=0.0)(out, masks, labels)
    torch.testing.assert_close(seg_only["loss"], seg_only["seg_loss"])
    with pytest.raises(ValueError, match="masks must have shape"):
        UltraADLoss()(out, masks[:, 0], labels)


def test_fusion_equals_multihead_attention():
    """The reassociated fusion computes exactly nn.MultiheadAttention with the same (trained-looking) weights."""
    torch.manual_seed(0)
    fusion = PatchLanguageFusion(64, 8)
    for p in fusion.parameters():
        torch.nn.init.normal_(p, std=0.2)
    prototypes, patches = torch.randn(3, 2, 64), torch.randn(3, 50, 64)
    attended, _ = fusion.attention(prototypes, patches, patches, need_weights=False)
    expected = F.normalize(prototypes + attended, dim=-1)
    torch.testing.assert_close(fusion(prototypes, patches), expected, atol=1e-5, rtol=1e-5)


def test_prompt_encoded_in_pieces_equals_whole_prompt(tiny_backbone):
    """The cached-prefix path (context once per step, tails per image) gives the full per-image encoding."""
    torch.manual_seed(0)
    learner = ImageAwarePromptLearner(tiny_backbone.text, tiny_backbone.embed_dim, n_ctx=4)
    assert learner.prefix_length > 0  # the tiny tower is a standard causal CLIP tower
    shared = torch.randn(5, tiny_backbone.embed_dim, requires_grad=True)
    pieces = learner(shared)
    pieces.square().sum().backward()
    grads_pieces = (shared.grad.clone(), learner.ctx.grad.clone(), learner.instance_proj.weight.grad.clone())
    for p in (shared, learner.ctx, learner.instance_proj.weight):
        p.grad = None
    learner.prefix_length = 0  # the whole prompt, per image
    whole = learner(shared)
    whole.square().sum().backward()
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads_pieces, (shared.grad, learner.ctx.grad, learner.instance_proj.weight.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_incremental_text_encoding_equals_full(tiny_backbone):
    text = tiny_backbone.text
    assert text.supports_incremental
    tokens = text.tokenize(["a photo of a benign breast lesion.", "a photo of a malignant breast lesion."])
    eot = tokens.argmax(dim=-1)
    emb = text.embed_tokens(tokens)
    length = int(eot.max()) + 1
    with torch.no_grad():
        full = text.encode_embeddings(emb, eot)
        _, cache = text.encode_incremental(emb[:, :3])
        hidden, _ = text.encode_incremental(emb[:, 3:length], cache)
        pieces = text.project(hidden[torch.arange(2), eot - 3])
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)


def test_prompt_learner_falls_back_when_the_tower_cannot_be_split(tiny_backbone, monkeypatch):
    monkeypatch.setattr(tiny_backbone.text, "_incremental_ok", False)
    learner = ImageAwarePromptLearner(tiny_backbone.text, tiny_backbone.embed_dim, n_ctx=2)
    assert learner.prefix_length == 0
    assert learner(torch.randn(2, tiny_backbone.embed_dim)).shape == (2, 2, tiny_backbone.embed_dim)
    with pytest.raises(RuntimeError, match="incremental"):
        tiny_backbone.text.encode_incremental(torch.zeros(1, 2, tiny_backbone.text.width))


def test_bf16_autocast_forward_matches_fp32(model, tiny_backbone):
    feats = tiny_backbone.encode_image(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        ref = model.forward_features(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_features(
                type(feats)(feats.cls_token, feats.patch_tokens.to(torch.bfloat16))  # stays bfloat16 under autocast
            )
    assert low.layer_logits.dtype == torch.bfloat16
    torch.testing.assert_close(low.class_probs.float(), ref.class_probs, atol=0.05, rtol=0)
    torch.testing.assert_close(low.anomaly_map.float(), ref.anomaly_map, atol=0.1, rtol=0)
    loss = UltraADLoss()(low, torch.zeros(3, 1, 64, 64), torch.tensor([0, 1, 2]))
    assert loss["loss"].dtype == torch.float32 and torch.isfinite(loss["loss"])
