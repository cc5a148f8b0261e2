"""MVFA (Huang et al., "Adapting Visual-Language Models for Generalizable Anomaly Detection in Medical Images",
CVPR 2024) as its authors built it: multi-level visual feature adapters *inside* the frozen CLIP image tower.

What the model computes (each line checked against the official code, github MediaBrain-SJTU/MVFA-AD, on the same
weights and inputs; see the method card in ``benchmarks/methods/anomaly.py`` for the measured differences):

* After each adapted block ``l`` (ViT-L: blocks 6, 12, 18, 24; other depths: the backbone's ``feature_layers``) a
  segmentation and a detection adapter read the raw residual stream ``x`` (class token included, no ``ln_post``, no
  projection). Each adapter is ``fc1 = LeakyReLU(W1 x)`` (width -> joint dim, e.g. 1024 -> 768, no bias) and
  ``fc2 = LeakyReLU(W2 fc1)`` (joint dim -> width, no bias). The stream continues as
  ``x <- 0.8 x + 0.1 fc2_seg + 0.1 fc2_det``, so every later block sees adapted tokens.
* The tokens compared with text are the ``fc1`` activations (joint-space width): L2-normalised patch tokens times
  ``100 x [normal, abnormal]`` text features (the WinCLIP-style state x template ensemble of ``utils.py``).
* Zero-shot branch: per level, the 2-class logits are upsampled (bilinear, ``align_corners=True``) to the input
  size, soft-maxed, the abnormal channel taken; levels are summed. Detection: per level the mean over patches of the
  patch-wise abnormal probability; levels summed.
* Few-shot branch: a memory of the segmentation (and detection) tokens -- patch *and* class tokens -- of every
  augmented view of the normal shots; per level ``min over memory (1 - cos)``, upsampled the same way, summed.
* Fusion: each branch min-max normalised, ``0.5 zero-shot + 0.5 few-shot``; image score = max of the fused map when
  the training data has masks (segmentation mode), else the normalised detection scores averaged (detection mode).

Where the official code has a quirk, this model does what the paper intends (each recorded in ``describe()``):

* normalisation statistics (the min and max of each branch) come from VALIDATION images (official: from the test
  set it scores);
* the detection loss is binary cross-entropy on the mean patch probability (official: ``BCEWithLogitsLoss`` applied
  to that probability, i.e. a sigmoid of a probability); ``det_loss="official"`` reproduces the quirk;
* the activation is whatever the weights need (QuickGELU for OpenAI weights, chosen by the backbone; official: GELU
  for every weight because their ``create_model`` builds the tower without ``quick_gelu``);
* the best epoch is chosen on validation images (official: on the test set) -- see :mod:`monai_ultraad.mvfa_engine`;
* the input is the package's preprocessing (square pad, the backbone's native size, CLIP mean/std; official: a
  240 px resize with bicubic-resized positional embeddings and no mean/std normalisation);
* the fused map returned as ``anomaly_map`` is clipped to [0, 1] (test values may fall outside the validation range);
  the image score is the max of the *unclipped* map.

Parity with the official code (their ``CLIP_Inplanted``, ``utils.augment``/``cos_sim``/prompt ensemble,
``test_few.test`` and ``train_zero.test`` run as they are; same random ViT-L-14-336 weights loaded into both with
``strict=True``, same adapter weights, real BUS-UCLM images, fp32 CPU; script outside the project): max abs
difference 2.6e-8 text features, 0 the 11 views, <= 2.4e-6 per-level seg/det tokens (values up to ~4), <= 2.4e-6
per-level zero-shot maps, <= 2.4e-7 detection scores, <= 2.9e-6 memory, <= 4.7e-7 per-level few-shot maps, 3.1e-6
fused few-shot map, 1.6e-6 image scores, 5.5e-6 zero-shot map, 0 zero-shot image score, 0 total loss and 1.2e-7
detection loss (with ``det_loss="official"``). Adapter gradients of one step differ by up to 1.7e-4 (max 0.156;
over the 1e-4 target, not yet explained: the two towers use different attention kernels in backward), so weights
after one Adam step differ by up to 1.7e-3 (Adam's first step is about lr * sign(g)). Intended differences,
measured: BCE instead of BCEWithLogits-on-a-probability changes the detection loss by 1.22 (official value 1.26);
validation instead of scored-set statistics moved the zero-shot map by up to 0.011; QuickGELU instead of GELU on the
same weights moves level-4 tokens by 0.034 and the summed zero-shot map by 1.6e-4.

Only the blocks up to the first adapter are independent of the adapters, so :meth:`MVFA.prefix` (no gradients)
is what can be cached per image view; :meth:`MVFA.adapted_tokens` runs the rest of the tower with gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from monai_ultraad.networks.backbone import ClipBackbone

#: The object phrase of the breast-ultrasound prompts (the same word the benchmark's baselines use).
MVFA_OBJECT = "breast ultrasound image"
#: State words and templates of the authors' prompt ensemble (``utils.encode_text_with_prompt_ensemble``).
MVFA_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                      "{} without damage")
MVFA_ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
MVFA_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "a low resolution photo of a {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)
#: Logit scale of the patch-text comparison.
LOGIT_SCALE = 100.0
#: The residual blend after an adapted block: x <- a x + b seg_out + c det_out.
BLEND = (0.8, 0.1, 0.1)
DET_LOSSES = ("bce", "official")
MODES = ("segmentation", "detection", "zero_shot")


class MVFAAdapter(nn.Module):
    """One adapter: ``mid = LeakyReLU(W1 x)`` (compared with text), ``out = LeakyReLU(W2 mid)`` (blended back)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, dim, bias=False)
        self.fc2 = nn.Linear(dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = F.leaky_relu(self.fc1(x))
        return mid, F.leaky_relu(self.fc2(mid))


@torch.no_grad()
def mvfa_text_features(backbone: ClipBackbone, object_name: str = MVFA_OBJECT) -> torch.Tensor:
    """(D, 2) [normal, abnormal] text features: per state, the normalised mean of the normalised sentence embeddings."""
    columns = []
    for states in (MVFA_NORMAL_STATES, MVFA_ABNORMAL_STATES):
        sentences = [t.format(s.format(object_name)) for s in states for t in MVFA_TEMPLATES]
        emb = F.normalize(backbone.text.encode_texts(sentences).float(), dim=-1)
        columns.append(F.normalize(emb.mean(dim=0), dim=0))
    return torch.stack(columns, dim=1)


@dataclass
class MVFATokens:
    """Adapter activations of a batch: (B, L, 1 + N, D), class token first, one slice per adapted level."""

    seg: torch.Tensor
    det: torch.Tensor


@dataclass
class MVFAOutput:
    """What MVFA scores for a batch.

    Attributes:
        anomaly_map: (B, 1, S, S) fused map, normalised with the validation statistics, clipped to [0, 1].
        anomaly_score: (B,) image score (higher = more abnormal).
        zero_shot_map / few_shot_map: (B, S, S) raw branch maps (sum over levels); few-shot None without memory.
        zero_shot_score / few_shot_score: (B,) raw detection scores (sum over levels of the mean patch probability;
            mean of the summed detection-memory map); few-shot None without memory.
    """

    anomaly_map: torch.Tensor
    anomaly_score: torch.Tensor
    zero_shot_map: torch.Tensor
    few_shot_map: torch.Tensor | None
    zero_shot_score: torch.Tensor
    few_shot_score: torch.Tensor | None


class MVFA(nn.Module):
    """MVFA on a frozen :class:`ClipBackbone` (see the module docstring for every computation and choice).

    Args:
        backbone: the frozen CLIP; its ``feature_layers`` are the adapted blocks (1-based, increasing).
        object_name: the object phrase of the prompts.
        mode: ``segmentation`` (training masks exist: Focal + Dice + BCE, map-based image score),
            ``detection`` (no masks: BCE only, detection-branch image score) or ``zero_shot`` (no memory: the
            zero-shot branch alone, image score from the detection tokens, as ``test_zero.py``).
        det_loss: ``bce`` (the paper's BCE on the mean patch probability) or ``official`` (their code's
            ``BCEWithLogitsLoss`` on that probability).
        init_seed: seed of the adapters' initialisation (torch's default ``nn.Linear`` init).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        object_name: str = MVFA_OBJECT,
        mode: str = "segmentation",
        det_loss: str = "bce",
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if det_loss not in DET_LOSSES:
            raise ValueError(f"det_loss must be one of {DET_LOSSES}, got {det_loss!r}")
        levels = tuple(int(v) for v in backbone.feature_layers)
        if list(levels) != sorted(set(levels)):
            raise ValueError(f"MVFA needs increasing adapted blocks, got {list(levels)}")
        self.backbone = backbone
        self.levels, self.object_name, self.mode, self.det_loss, self.init_seed = levels, object_name, mode, det_loss, init_seed
        self.blend = BLEND
        width, dim = backbone.vision_width, backbone.embed_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.seg_adapters = nn.ModuleList(MVFAAdapter(width, dim) for _ in levels)
            self.det_adapters = nn.ModuleList(MVFAAdapter(width, dim) for _ in levels)
        self.register_buffer("text_features", mvfa_text_features(backbone, object_name))
        # memory of the normal shots' views: (L, M, D), empty until set_memory; branch min/max: set by calibrate
        self.register_buffer("seg_memory", torch.zeros(len(levels), 0, dim))
        self.register_buffer("det_memory", torch.zeros(len(levels), 0, dim))
        self.register_buffer("norm_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    # ------------------------------------------------------------------ provenance
    @property
    def random_weights(self) -> bool:
        return self.backbone.random_weights

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("normal", "abnormal")

    @property
    def has_memory(self) -> bool:
        return self.seg_memory.shape[1] > 0

    def describe(self) -> dict:
        return {
            "kind": "mvfa",
            "config": {
                "backbone": self.backbone.model_name, "feature_layers": list(self.levels), "object_name": self.object_name,
                "mode": self.mode, "det_loss": self.det_loss, "init_seed": self.init_seed,
                "memory_views": int(self.seg_memory.shape[1]),
            },
            "backbone": self.backbone.description,
            "choices": [
                "normalisation statistics from validation images (official: the test set)",
                f"detection loss {'BCE on the mean patch probability' if self.det_loss == 'bce' else 'BCEWithLogits on the probability (official quirk)'}",
                f"activation as the weights need (quick_gelu={self.backbone.quick_gelu}; official: GELU always)",
                "best epoch on validation images (official: the test set)",
                f"input {self.image_size} px, square pad, CLIP mean/std (official: 240 px resize, no mean/std)",
            ],
        }

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything trained or fitted (adapters, text, memory, statistics); not the frozen backbone."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_head_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("seg_memory", "det_memory"):  # the memory's size is data-dependent
            if name in state:
                setattr(self, name, state[name].to(getattr(self, name).device, torch.float32).clone())
        missing = self.load_state_dict({k: v for k, v in state.items()}, strict=False)
        absent = [k for k in missing.missing_keys if not k.startswith("backbone.")]
        if absent or missing.unexpected_keys:
            raise KeyError(f"MVFA head state does not match: missing {absent}, unexpected {missing.unexpected_keys}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.seg_adapters.parameters(), *self.det_adapters.parameters()]

    def train(self, mode: bool = True) -> MVFA:
        super().train(mode)
        self.backbone.train(False)  # frozen tower, always in eval mode
        return self

    # ------------------------------------------------------------------ tower
    def _blocks(self) -> nn.ModuleList:
        return self.backbone.visual.transformer.resblocks

    def _run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        block = self._blocks()[index]
        if getattr(self.backbone.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    @property
    def prefix_blocks(self) -> int:
        """Blocks whose output does not depend on the adapters (up to and including the first adapted block)."""
        return self.levels[0]

    @torch.no_grad()
    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 1 + N, W) residual stream entering the first adapter."""
        visual = self.backbone.visual
        param = next(visual.parameters())
        x = visual._embeds(images.to(param.device, param.dtype))
        for index in range(self.prefix_blocks):
            x = self._run_block(index, x)
        return x

    def adapted_tokens(self, stream: torch.Tensor) -> MVFATokens:
        """Run the adapted part of the tower on :meth:`prefix` output (with gradients to the adapters)."""
        seg, det = [], []
        done, x = self.prefix_blocks, stream
        a, b, c = self.blend
        for level, seg_adapter, det_adapter in zip(self.levels, self.seg_adapters, self.det_adapters):
            while done < level:
                x = self._run_block(done, x)
                done += 1
            seg_mid, seg_out = seg_adapter(x)
            det_mid, det_out = det_adapter(x)
            x = a * x + b * seg_out + c * det_out
            seg.append(seg_mid)
            det.append(det_mid)
        return MVFATokens(torch.stack(seg, dim=1), torch.stack(det, dim=1))

    def forward(self, images: torch.Tensor) -> MVFATokens:
        return self.adapted_tokens(self.prefix(images))

    # ------------------------------------------------------------------ branches
    def _grid(self, n: int) -> int:
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        return g

    def patch_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, 1 + N, D) adapter tokens -> (B, L, N, 2) normal/abnormal logits of the patch tokens."""
        patches = tokens[:, :, 1:]
        patches = patches / patches.norm(dim=-1, keepdim=True)
        return LOGIT_SCALE * patches @ self.text_features.to(patches.dtype)

    def _upsample(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C, N) patch values -> (B, C, S, S), bilinear with aligned corners (as the official maps)."""
        g = self._grid(values.shape[-1])
        grid = values.reshape(*values.shape[:-1], g, g)
        return F.interpolate(grid, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)

    def level_logit_maps(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, L, 2, S, S) upsampled 2-class logits of every level (what the segmentation loss soft-maxes)."""
        logits = self.patch_logits(seg)  # (B, L, N, 2)
        bsz, n_levels = logits.shape[:2]
        up = self._upsample(logits.transpose(-1, -2).flatten(0, 1))  # (B*L, 2, S, S)
        return up.view(bsz, n_levels, 2, *up.shape[-2:])

    def zero_shot_maps(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, L, S, S) per-level abnormal probability of the zero-shot branch."""
        return self.level_logit_maps(seg).softmax(dim=2)[:, :, 1]

    def detection_probs(self, det: torch.Tensor) -> torch.Tensor:
        """(B, L) per-level mean over patches of P(abnormal) from the detection tokens."""
        return self.patch_logits(det).softmax(dim=-1)[..., 1].mean(dim=-1)

    def few_shot_maps(self, tokens: torch.Tensor, memory: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """(B, L, S, S) per-level ``min over memory (1 - cos)`` of the patch tokens, upsampled."""
        if memory.shape[1] == 0:
            raise ValueError("the few-shot memory is empty: call set_memory with the normal shots first")
        patches = F.normalize(tokens[:, :, 1:], dim=-1, eps=1e-8)  # (B, L, N, D)
        memory = F.normalize(memory.to(patches.dtype), dim=-1, eps=1e-8)  # (L, M, D)
        best = None
        for start in range(0, memory.shape[1], chunk):
            sim = torch.einsum("blnd,lmd->blnm", patches, memory[:, start:start + chunk]).amax(dim=-1)
            best = sim if best is None else torch.maximum(best, sim)
        return self._upsample(1.0 - best)

    # ------------------------------------------------------------------ memory and statistics
    @torch.no_grad()
    def memory_tokens(self, streams: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 16) -> MVFATokens:
        """Tokens of the normal shots' views (prefix streams) flattened per level: (L, M, D), class tokens included."""
        streams = torch.cat(list(streams)) if not torch.is_tensor(streams) else streams
        seg, det = [], []
        for start in range(0, streams.shape[0], batch_size):
            tok = self.adapted_tokens(streams[start:start + batch_size])
            seg.append(tok.seg.transpose(0, 1).flatten(1, 2))
            det.append(tok.det.transpose(0, 1).flatten(1, 2))
        return MVFATokens(torch.cat(seg, dim=1), torch.cat(det, dim=1))

    @torch.no_grad()
    def set_memory(self, normal_streams: torch.Tensor | None) -> None:
        """Fill the few-shot memory from the prefix streams of every view of the normal shots (None: empty)."""
        if normal_streams is None or normal_streams.shape[0] == 0 or self.mode == "zero_shot":
            dim = self.text_features.shape[0]
            self.seg_memory = self.text_features.new_zeros(len(self.levels), 0, dim)
            self.det_memory = self.text_features.new_zeros(len(self.levels), 0, dim)
            return
        mem = self.memory_tokens(normal_streams)
        self.seg_memory, self.det_memory = mem.seg.float(), mem.det.float()

    @torch.no_grad()
    def raw_branches(self, tokens: MVFATokens) -> dict[str, torch.Tensor | None]:
        """Un-normalised branch outputs of a batch (see :class:`MVFAOutput`)."""
        zs_map = self.zero_shot_maps(tokens.seg).sum(dim=1)
        zs_score = self.detection_probs(tokens.det).sum(dim=1)
        fs_map = fs_score = None
        if self.has_memory and self.mode != "zero_shot":
            fs_map = self.few_shot_maps(tokens.seg, self.seg_memory).sum(dim=1)
            if self.mode == "detection":
                fs_score = self.few_shot_maps(tokens.det, self.det_memory).sum(dim=1).flatten(1).mean(dim=1)
        return {"zero_shot_map": zs_map, "few_shot_map": fs_map, "zero_shot_score": zs_score,
                "few_shot_score": fs_score}

    def _branch_values(self, raw: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two quantities that are min-max normalised and fused in this mode (per image or per pixel)."""
        if self.mode == "segmentation":
            return raw["zero_shot_map"], raw["few_shot_map"]
        if self.mode == "detection":
            return raw["zero_shot_score"], raw["few_shot_score"]
        return raw["zero_shot_map"], raw["zero_shot_score"]  # zero-shot: map and score normalised separately

    @torch.no_grad()
    def calibrate(self, raws: Sequence[dict[str, torch.Tensor | None]]) -> torch.Tensor:
        """Set the min-max statistics of the two branch values from VALIDATION outputs; returns them."""
        firsts, seconds = zip(*(self._branch_values(r) for r in raws))
        stats = []
        for values in (firsts, seconds):
            if values[0] is None:
                stats += [0.0, 1.0]
                continue
            flat = torch.cat([v.flatten() for v in values])
            lo, hi = float(flat.min()), float(flat.max())
            stats += [lo, hi if hi > lo else lo + 1.0]
        self.norm_stats = torch.tensor(stats, device=self.norm_stats.device)
        return self.norm_stats

    def _normalise(self, value: torch.Tensor, which: int) -> torch.Tensor:
        lo, hi = self.norm_stats[2 * which], self.norm_stats[2 * which + 1]
        return (value - lo) / (hi - lo)

    @torch.no_grad()
    def score_tokens(self, tokens: MVFATokens) -> MVFAOutput:
        return self.fuse(self.raw_branches(tokens))

    def fuse(self, raw: dict) -> MVFAOutput:
        """The two branches (from :meth:`raw_branches`) normalised and fused into the map and image score."""
        first, second = self._branch_values(raw)
        zs_map = raw["zero_shot_map"]
        if self.mode == "segmentation":
            fused = 0.5 * self._normalise(first, 0) + 0.5 * self._normalise(second, 1)
            score = fused.flatten(1).amax(dim=1)
        elif self.mode == "detection":
            score = 0.5 * self._normalise(first, 0) + 0.5 * self._normalise(second, 1)
            fused = self._seg_like(zs_map)
        else:
            fused = self._normalise(first, 0)
            score = self._normalise(second, 1)
        return MVFAOutput(fused.clamp(0.0, 1.0).unsqueeze(1), score, zs_map, raw["few_shot_map"],
                          raw["zero_shot_score"], raw["few_shot_score"])

    def _seg_like(self, zs_map: torch.Tensor) -> torch.Tensor:
        # detection mode has no trained localisation: the zero-shot map divided by the number of levels (a
        # probability) is returned so that a heatmap can still be drawn; its metrics are not MVFA's claim
        return zs_map / len(self.levels)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> MVFAOutput:
        """(B, 3, S, S) normalised images -> :class:`MVFAOutput`."""
        return self.score_tokens(self(images))


# ---------------------------------------------------------------------------------------------------- losses
def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on 2-class PROBABILITIES (B, 2, S, S) and a binary mask (B, 1, S, S), mean over pixels.

    As MVFA's ``loss.FocalLoss``: the one-hot target is clamped to [smooth, 1 - smooth] and ``smooth`` is added to
    ``p_t`` before the log, so ``p_t = (1 - s) p_target + s p_other + s``, loss ``-(1 - p_t)^gamma log p_t``.
    """
    target = mask.reshape(-1).long()
    p = probs.permute(0, 2, 3, 1).reshape(-1, 2)
    p_target = p.gather(1, target[:, None])[:, 0]
    p_other = p.gather(1, (1 - target)[:, None])[:, 0]
    pt = (1.0 - smooth) * p_target + smooth * p_other + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def binary_dice_loss(prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - mean_i (2 |p_i m_i| + 1) / (|p_i| + |m_i| + 1)`` over the images i of the batch (smooth 1)."""
    p, m = prob.flatten(1), mask.flatten(1).to(prob.dtype)
    return 1.0 - ((2.0 * (p * m).sum(1) + 1.0) / (p.sum(1) + m.sum(1) + 1.0)).mean()


def mvfa_loss(model: MVFA, tokens: MVFATokens, masks: torch.Tensor | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-level losses summed over levels: BCE detection loss, and (segmentation mode) Focal + binary Dice.

    ``masks`` (B, 1, S, S) are binarised at 0.5 (as the official code does with augmented masks); ``labels`` (B,)
    1 for abnormal, 0 for normal.
    """
    target = labels.to(tokens.det.dtype)
    det_probs = model.detection_probs(tokens.det)  # (B, L)
    det = tokens.det.new_zeros(())
    for level in range(det_probs.shape[1]):
        if model.det_loss == "official":
            det = det + F.binary_cross_entropy_with_logits(det_probs[:, level], target)
        else:
            det = det + F.binary_cross_entropy(det_probs[:, level], target)
    parts = {"det": det}
    if model.mode != "detection" and masks is not None:
        mask = (masks > 0.5).to(tokens.seg.dtype)
        probs = model.level_logit_maps(tokens.seg).softmax(dim=2)  # (B, L, 2, S, S)
        focal = tokens.seg.new_zeros(())
        dice = tokens.seg.new_zeros(())
        for level in range(probs.shape[1]):
            focal = focal + focal_loss(probs[:, level], mask)
            dice = dice + binary_dice_loss(probs[:, level, 1], mask[:, 0])
        parts.update(focal=focal, dice=dice)
    parts["loss"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------------------------- views
#: The authors' 11 views of a shot (``utils.augment``): itself, 4 rotations, 4 translations, 2 flips.
MVFA_ROTATIONS = (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8)
MVFA_TRANSLATIONS = ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
N_VIEWS = 1 + len(MVFA_ROTATIONS) + len(MVFA_TRANSLATIONS) + 2


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta[None].expand(x.shape[0], 2, 3).to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def view(x: torch.Tensor, index: int) -> torch.Tensor:
    """View ``index`` (0..10) of a (B, C, H, W) batch of images or masks, in the authors' order.

    The views are geometric and, with reflection padding, commute with a per-channel affine intensity
    normalisation, so they can be applied to CLIP-normalised images.
    """
    if index == 0:
        return x
    if index <= len(MVFA_ROTATIONS):
        # the angle's cosine and sine in float32, as the authors compute them (float64 moves samples by ~1e-5)
        a = torch.tensor(MVFA_ROTATIONS[index - 1], dtype=torch.float32)
        cos, sin = torch.cos(a), torch.sin(a)
        zero = torch.zeros((), dtype=torch.float32)
        return _affine(x, torch.stack([torch.stack([cos, -sin, zero]), torch.stack([sin, cos, zero])]))
    index -= 1 + len(MVFA_ROTATIONS)
    if index < len(MVFA_TRANSLATIONS):
        tx, ty = MVFA_TRANSLATIONS[index]
        return _affine(x, torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty]]))
    if index == len(MVFA_TRANSLATIONS):
        return x.flip(-1)
    if index == len(MVFA_TRANSLATIONS) + 1:
        return x.flip(-2)
    raise IndexError(f"MVFA has {N_VIEWS} views (0..{N_VIEWS - 1})")


def all_views(x: torch.Tensor, n_views: int = N_VIEWS) -> torch.Tensor:
    """(n_views * B, C, H, W): the first ``n_views`` views, view-major as the authors concatenate them."""
    return torch.cat([view(x, i) for i in range(n_views)])


__all__ = [
    "BLEND",
    "LOGIT_SCALE",
    "MVFA",
    "MVFA_OBJECT",
    "N_VIEWS",
    "MVFAAdapter",
    "MVFAOutput",
    "MVFATokens",
    "all_views",
    "binary_dice_loss",
    "focal_loss",
    "mvfa_loss",
    "mvfa_text_features",
    "view",
]
