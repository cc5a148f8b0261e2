"""AnomalyCLIP (Zhou et al., ICLR 2024; reference code github zqhang/AnomalyCLIP) on the benchmark's frozen open_clip
towers: object-agnostic learnable prompts with deep text tokens, DPAM image features, its loss, map and score.

* **DPAM** (diagonally prominent attention map): from block ``s`` on, the image tower runs a second path beside the
  unchanged one. Each such block computes, from the ORIGINAL path's LayerNorm-ed input, a value-value self-attention
  (softmax(v v^T / sqrt(d_head)) v, then the block's output projection) and adds it to the second path, which skips
  the MLP. The patch tokens of the second path at the tapped blocks, after ``ln_post`` and the projection, make the
  local maps; the global embedding is the original path's last class token times the projection (the reference
  code applies no ``ln_post`` to it). The reference replaces the attention of the last 19 of ViT-L/14's 24 blocks
  (``DPAM_layer=20``: blocks 6-24, 6 being its first feature tap); other depths get the same share, from block
  round(n * 6 / 24): ViT-B/16 blocks 3-12, the 4-block test tower all of them.
* **Prompts**: ``[V_1..V_12] object.`` and ``[W_1..W_12] damaged object.`` (12 learnable context tokens each) through
  the frozen text tower, whose blocks 2..9 (depth 9) each get their input tokens 1..4 replaced by 4 learnable
  tokens of their own (deep prompt tuning; capped at the tower's depth).
* **Loss**: 4 x sum over tapped blocks of [Focal + Dice(abnormal, mask) + Dice(normal, 1 - mask)] on the upsampled
  2-class softmax maps (temperature 0.07), + cross-entropy of the global embedding against the two prompts.
* **Output**: image score = P(abnormal) of the global embedding; map = sum over the taps of the upsampled
  P(abnormal), Gaussian-smoothed (scipy, sigma 4) as the reference's test.py. After the reference's 2025 fix
  (commit 76b83e1, "AnomalyCLIP uses only top feature map") the only tap is the last block.

The DPAM features of the frozen tower are computed once per image and cached (:mod:`benchmarks.methods.derived`).
Parity with the reference code on the same random weights: ``benchmarks/anomalyclip_parity.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import abnormal_labels, train_minibatches
from benchmarks.methods.derived import derived_store
from monai_ultraad.networks import ClipBackbone

#: Reference defaults (train.py): learnable context length, deep-prompt depth, deep tokens per block.
N_CTX, DEPTH, DEEP_LENGTH = 12, 9, 4
#: The softmax temperature of every similarity (reference: / 0.07).
TEMPERATURE = 0.07
#: Weight of the local loss against the global one (reference train.py: ``lam = 4``).
LOCAL_WEIGHT = 4.0
#: Gaussian smoothing of the test map (reference test.py: ``--sigma 4``).
SIGMA = 4.0
#: Reference: 15 epochs, batch 8 (on the auxiliary dataset).
EPOCHS, BATCH = 15, 8
NORMAL_SUFFIX, ABNORMAL_SUFFIX = "object", "damaged object"


def dpam_start(n_blocks: int) -> int:
    """1-based first block of the V-V path: 6 of 24 as the reference, the same share of other depths."""
    return max(1, round(n_blocks * 6 / 24))


def vv_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """V-V self-attention of (B, T, W) inputs with the weights of ``attn``: per head softmax(v v^T / sqrt(d)) v,
    heads merged, then ``attn``'s output projection. Queries and keys are not used."""
    batch, length, width = x.shape
    v = F.linear(x, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    v = v.view(batch, length, attn.num_heads, width // attn.num_heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v)  # scale 1 / sqrt(head dim), as q k^T
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))


@torch.no_grad()
def dpam_features(backbone: ClipBackbone, images: torch.Tensor, taps: Sequence[int],
                  start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The global embedding (B, D) and the DPAM path's projected tokens at the 1-based blocks ``taps``
    (B, L, 1 + N, D; class token first, not normalised) of ``images`` (B, 3, S, S)."""
    visual = backbone.visual
    blocks = visual.transformer.resblocks
    start = dpam_start(len(blocks)) if start is None else start
    param = next(visual.parameters())
    x = visual._embeds(images.to(param.device, param.dtype))  # patches, class token, positions, ln_pre
    seq_first = not getattr(visual.transformer, "batch_first", True)
    second, taken = None, {}
    for number, block in enumerate(blocks, start=1):
        if number >= start:
            path = x if second is None else second
            second = path + block.ls_1(vv_attention(block.attn, block.ln_1(x)))
        x = block(x.transpose(0, 1)).transpose(0, 1) if seq_first else block(x)
        if number in taps:
            taken[number] = x if second is None else second
    tokens = torch.stack([visual.ln_post(taken[n]) @ visual.proj for n in taps], dim=1)
    return x[:, 0] @ visual.proj, tokens


class AnomalyCLIPPrompts(nn.Module):
    """The two object-agnostic prompts with learnable context and deep text tokens; ``forward()`` -> (2, D)
    normalised [normal, abnormal] text embeddings.

    Attributes:
        ctx: (2, n_ctx, width) context of the normal and the abnormal prompt (reference ``ctx_pos`` / ``ctx_neg``).
        deep: (n_deep, deep_length, width): the tokens that replace positions 1..deep_length at the input of text
            blocks 2 .. n_deep + 1 (reference ``compound_prompts_text``).
    """

    def __init__(self, backbone: ClipBackbone, n_ctx: int = N_CTX, depth: int = DEPTH,
                 deep_length: int = DEEP_LENGTH, seed: int = 0) -> None:
        super().__init__()
        encoder = backbone.text
        self.encoder = [encoder]  # a list keeps the frozen tower out of this module's parameters
        if deep_length > n_ctx:
            raise ValueError(f"deep prompt length {deep_length} exceeds the context length {n_ctx}")
        placeholders = " ".join(["X"] * n_ctx)
        tokens = encoder.tokenize([f"{placeholders} {NORMAL_SUFFIX}.", f"{placeholders} {ABNORMAL_SUFFIX}."])
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)
        self.length = int(self.eot.max()) + 1
        with torch.no_grad():
            self.register_buffer("base", encoder.embed_tokens(tokens).float().cpu(), persistent=False)
        self.n_ctx, self.deep_length = n_ctx, deep_length
        n_deep = min(depth, len(encoder.transformer.resblocks)) - 1
        generator = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(2, n_ctx, encoder.width, generator=generator) * 0.02)
        self.deep = nn.Parameter(torch.randn(max(n_deep, 0), deep_length, encoder.width, generator=generator) * 0.02)

    def forward(self) -> torch.Tensor:
        encoder = self.encoder[0]
        x = torch.cat([self.base[:, :1], self.ctx, self.base[:, 1 + self.n_ctx:]], dim=1)[:, :self.length]
        x = x.to(encoder.positional_embedding.dtype) + encoder.positional_embedding[:self.length]
        mask = encoder.attn_mask[:self.length, :self.length]
        seq_first = not getattr(encoder.transformer, "batch_first", True)
        for index, block in enumerate(encoder.transformer.resblocks):
            if 1 <= index <= len(self.deep):  # blocks 2 .. n_deep + 1 get their own tokens 1..deep_length
                deep = self.deep[index - 1].expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + self.deep_length:]], dim=1)
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1) if seq_first else block(x, attn_mask=mask)
        text = encoder.project(x[torch.arange(x.shape[0]), self.eot])
        return F.normalize(text.float(), dim=-1)


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """The reference's focal loss on class PROBABILITIES ``prob`` (B, C, H, W) against class indices ``target``
    (B, [1,] H, W): one-hot clamped to [smooth / (C - 1), 1 - smooth], p_t = <one-hot, p> + smooth,
    mean of -(1 - p_t)^gamma log p_t (alpha 1)."""
    classes = prob.shape[1]
    p = prob.movedim(1, -1).reshape(-1, classes)
    one_hot = F.one_hot(target.reshape(-1).long(), classes).to(p.dtype).clamp(smooth / (classes - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return -((1.0 - pt) ** gamma * pt.log()).mean()


#: The reference's binary Dice: per image 1 - (2 |p m| + 1) / (|p| + |m| + 1), mean over the batch.
binary_dice = DiceLoss(smooth_nr=1.0, smooth_dr=1.0)


def patch_probabilities(tokens: torch.Tensor, text: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1 + N, D) projected tokens (class token first) vs (2, D) normalised text -> (B, 2, size, size)
    softmax maps: the patches' cosine similarities / 0.07, softmax over [normal, abnormal], bilinear upsampling."""
    patches = F.normalize(tokens[:, 1:].float(), dim=-1)
    prob = (patches @ text.T / TEMPERATURE).softmax(dim=-1)  # (B, N, 2)
    grid = round(prob.shape[1] ** 0.5)
    prob = prob.transpose(1, 2).reshape(prob.shape[0], 2, grid, grid)
    return F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=False)


def anomalyclip_loss(image: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                     masks: torch.Tensor) -> torch.Tensor:
    """The reference's training loss of a batch: ``image`` (B, D) global embeddings, ``tokens`` (B, L, 1 + N, D),
    ``text`` (2, D) normalised, ``labels`` (B,) 0 normal / 1 abnormal, ``masks`` (B, 1, S, S) binary."""
    logits = F.normalize(image.float(), dim=-1) @ text.T / TEMPERATURE
    local = 0.0
    for layer in range(tokens.shape[1]):
        prob = patch_probabilities(tokens[:, layer], text, masks.shape[-1])
        local = local + focal_loss(prob, masks) + binary_dice(prob[:, 1:], masks) \
            + binary_dice(prob[:, :1], 1.0 - masks)
    return LOCAL_WEIGHT * local + F.cross_entropy(logits, labels.long())


@torch.no_grad()
def anomalyclip_outputs(image: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor, size: int,
                        sigma: float = SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (B,) and maps (B, size, size) as the reference's test.py: P(abnormal) of the global embedding;
    sum over the taps of the upsampled P(abnormal), smoothed with scipy's Gaussian filter."""
    score = (F.normalize(image.float(), dim=-1) @ text.T / TEMPERATURE).softmax(dim=-1)[:, 1]
    amap = sum(patch_probabilities(tokens[:, layer], text, size)[:, 1] for layer in range(tokens.shape[1]))
    smoothed = np.stack([gaussian_filter(m, sigma=sigma) for m in amap.double().numpy()])
    return score, torch.from_numpy(smoothed).float()


def _cached(backbone: ClipBackbone, taps: Sequence[int], start: int):
    def compute(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dpam_features(backbone, images, taps, start)

    return compute


class AnomalyCLIP(Method):
    """AnomalyCLIP's prompts, DPAM features, loss, map and score (module docstring), trained on the k shots.

    Options: ``epochs`` (default 15, the reference's).
    """

    name = "AnomalyCLIP"
    needs_images = True
    card = MethodCard(
        family="prompt learning (anomaly)",
        image_score="softmax(cos(global embedding, [normal, abnormal] learnt prompts) / 0.07)[abnormal]",
        localisation="DPAM (value-value attention path) patch tokens of the last block vs the learnt "
                     "object-agnostic prompts with deep text tokens, softmax / 0.07, P(abnormal)",
        smoothing="bilinear + scipy Gaussian sigma 4 px (as the reference's test.py)",
        classes="binary only",
        reference="Zhou et al., AnomalyCLIP, ICLR 2024; zqhang/AnomalyCLIP (parity: benchmarks/anomalyclip_parity.py)",
        notes=[
            ("trained on the k shots' masks (reference: on an auxiliary dataset, VisA <-> MVTec, 15 epochs batch 8); "
            f"here {EPOCHS} epochs, batch {BATCH}, over the shots"),
            ("input: the backbone's size with the benchmark's preprocessing (reference: 518 px, positional "
            "embedding interpolated)"),
            ("DPAM from block round(n * 6 / 24) on (reference, ViT-L/14: DPAM_layer 20 = blocks 6-24); ViT-B-16: "
            "blocks 3-12"),
            "deep text prompts in blocks 2..min(9, text depth); the tiny test tower has 2 text blocks",
            "deep tokens kept in float32 (the reference casts them to float16 as it inserts them)",
            ("one tap, the last block (reference since its 2025 fix, commit 76b83e1; earlier its 4 taps were "
            "identical by a bug); global embedding without ln_post, as the reference code"),
            "DPAM features cached in float16 (parity measured in float32)",
        ],
    )

    def __init__(self, backbone, class_names, **options) -> None:
        super().__init__(backbone, class_names, **options)
        n_blocks = len(backbone.visual.transformer.resblocks)
        self.taps, self.start = (n_blocks,), dpam_start(n_blocks)
        self.epochs = int(options.get("epochs", EPOCHS))

    def fit(self, data: FitData) -> dict[str, Any]:
        name = f"anomalyclip-dpam-from{self.start}-taps{'-'.join(map(str, self.taps))}"
        self.features = derived_store(data.store, name, _cached(self.backbone, self.taps, self.start))
        shots = self.features.get(data.shot_items)
        image, tokens = shots.cls_token.float(), shots.patch_tokens.float()
        labels, masks = abnormal_labels(data.labels), (data.masks > 0.5).float()
        self.prompts = AnomalyCLIPPrompts(self.backbone, seed=data.seed)

        def step(idx: torch.Tensor) -> torch.Tensor:
            return anomalyclip_loss(image[idx], tokens[idx], self.prompts(), labels[idx], masks[idx])

        history = train_minibatches(self.prompts.parameters(), step, len(labels), self.epochs, data.seed,
                                    batch_size=BATCH, lr=1e-3, adam_betas=(0.5, 0.999))
        with torch.no_grad():
            self.text = self.prompts()
        return {"epochs": self.epochs, "final_loss": history[-1], "dpam_from_block": self.start,
                "taps": list(self.taps)}

    @torch.no_grad()
    def predict_items(self, items: list[dict]) -> Prediction:
        feats = self.features.get(items)
        score, amap = anomalyclip_outputs(feats.cls_token.float(), feats.patch_tokens.float(), self.text,
                                          self.backbone.image_size)
        # the summed map lies in [0, L] (L taps); the metrics take maps in [0, 1]: a fixed scale, ranks unchanged
        return Prediction(score, None, (amap / len(self.taps)).clamp(0.0, 1.0).unsqueeze(1))

    def predict(self, features):
        raise TypeError("AnomalyCLIP reads its own DPAM features: the protocol calls predict_items")
