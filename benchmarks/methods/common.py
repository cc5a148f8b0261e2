"""Building blocks shared by the baselines: prompt ensembles, projected patch tokens, maps, losses, training loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn
from torch.nn import functional as F

from monai_ultraad.networks import ClipBackbone, VisualFeatures

#: CLIP's logit scale for cosine similarities.
LOGIT_SCALE = 100.0
#: Object word used in every baseline's prompts (the same for all, so prompts are not what is compared).
OBJECT = "breast ultrasound image"
#: WinCLIP's compositional prompt ensemble (Jeong et al., 2023): state words x templates.
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
             "a bright photo of a {}.", "a dark photo of the {}.", "a photo of the {}.", "a photo of a {}.",
             "a black and white photo of the {}.", "a blurry photo of the {}.", "a low resolution photo of a {}.")
#: CLIP-style class phrases of the few-shot classifiers (CoOp, Tip-Adapter, ...): their hand-written prompts.
CLASS_PHRASES = {
    "normal": "normal breast ultrasound image",
    "benign": "benign breast lesion ultrasound image",
    "malignant": "malignant breast tumor ultrasound image",
}


@torch.no_grad()
def encode_ensemble(backbone: ClipBackbone, texts: Sequence[str]) -> torch.Tensor:
    """Normalised mean of the normalised embeddings of ``texts``: (D,)."""
    emb = F.normalize(backbone.text.encode_texts(list(texts)).float(), dim=-1)
    return F.normalize(emb.mean(dim=0), dim=-1)


def state_text(backbone: ClipBackbone) -> torch.Tensor:
    """(2, D) [normal, abnormal] text of WinCLIP's compositional ensemble (cached on the backbone)."""
    cached = getattr(backbone, "_bench_state_text", None)
    if cached is None:
        rows = []
        for states in (NORMAL_STATES, ABNORMAL_STATES):
            rows.append(encode_ensemble(backbone, [t.format(s.format(OBJECT)) for s in states for t in TEMPLATES]))
        cached = torch.stack(rows)
        backbone._bench_state_text = cached
    return cached


def class_text(backbone: ClipBackbone, class_names: Sequence[str]) -> torch.Tensor:
    """(C, D) hand-written CLIP class prompts ("a photo of a <class phrase>.") ensembled over templates."""
    return torch.stack(
        [encode_ensemble(backbone, [t.format(CLASS_PHRASES[c]) for t in TEMPLATES]) for c in class_names]
    )


def projection(backbone: ClipBackbone) -> torch.Tensor:
    """(W, D) the image tower's output projection, applied to patch tokens to compare them with text."""
    proj = getattr(backbone.visual, "proj", None)
    if proj is None:
        raise ValueError(f"{backbone.model_name} has no visual projection; patch-text methods need one")
    return proj.detach().float()


def project_patches(backbone: ClipBackbone, features: VisualFeatures) -> torch.Tensor:
    """(B, L, N, D) normalised projected patch tokens of every tapped layer (WinCLIP / AnomalyCLIP style)."""
    return F.normalize(features.patch_tokens.float() @ projection(backbone), dim=-1)


def normalised_cls(features: VisualFeatures) -> torch.Tensor:
    return F.normalize(features.cls_token.float(), dim=-1)


def two_class_logits(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Normal/abnormal logits of normalised ``tokens`` (B, N, D) against ``text`` (2, D) or (B, 2, D): (B, 2, N)."""
    if text.ndim == 2:
        return LOGIT_SCALE * torch.einsum("bnd,kd->bkn", tokens, text)
    return LOGIT_SCALE * torch.einsum("bnd,bkd->bkn", tokens, text)


def gaussian_smooth(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(m, sigma)`` of each (H, W) map of ``maps`` (B, C, H, W): the sampled,
    normalised kernel of radius int(truncate * sigma + 0.5) and scipy's default edge mode ``reflect`` (mirrored about
    the edge, the edge pixel repeated). The CLIP anomaly-map code (AnomalyCLIP, AdaCLIP, ...) smooths with that call;
    MONAI's GaussianFilter pads with zeros instead, which pulls the values within ~2 sigma of the border toward 0."""
    radius = int(truncate * sigma + 0.5)
    b, c, h, w = maps.shape
    if radius >= min(h, w):
        raise ValueError(f"gaussian_smooth: sigma {sigma} needs maps larger than {radius} px, got {h} x {w}")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps)
    x = maps.reshape(b * c, 1, h, w)
    for dim, shape in ((2, (1, 1, -1, 1)), (3, (1, 1, 1, -1))):
        head, tail = x.narrow(dim, 0, radius).flip(dim), x.narrow(dim, x.shape[dim] - radius, radius).flip(dim)
        x = F.conv2d(torch.cat([head, x, tail], dim=dim), kernel.view(shape))
    return x.reshape(b, c, h, w)


def to_grid(values: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, [K,] N) patch values -> (B, [K,] g, g)."""
    return values.reshape(*values.shape[:-1], grid, grid)


class MapMaker:
    """Patch probabilities (B, N) -> (B, 1, S, S) maps: bilinear upsampling, then optional Gaussian smoothing.

    The smoothing is :func:`gaussian_smooth` (scipy's ``gaussian_filter``, mirrored edges, as the reference CLIP
    anomaly-map code smooths); the sigma is recorded in each method's card.
    """

    def __init__(self, backbone: ClipBackbone, sigma: float = 0.0) -> None:
        self.grid, self.size, self.sigma = backbone.grid_size, backbone.image_size, float(sigma)

    def __call__(self, patch_prob: torch.Tensor) -> torch.Tensor:
        x = to_grid(patch_prob.float(), self.grid).unsqueeze(1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.sigma > 0:
            x = gaussian_smooth(x, self.sigma)
        return x.clamp(0.0, 1.0)


class SegmentationLoss(nn.Module):
    """Dice + Focal on 2-class (normal / abnormal) patch logits upsampled to the mask: April-GAN / MVFA / UltraAD."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor, grid: int) -> torch.Tensor:
        """``logits`` (B, 2, N) or (B, 2, g, g), ``masks`` (B, 1, S, S)."""
        if logits.ndim == 3:
            logits = to_grid(logits, grid)
        up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return self.dice(up, masks) + self.focal(up, masks)


def train_minibatches(
    params: Sequence[nn.Parameter],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    epochs: int,
    seed: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    adam_betas: tuple[float, float] | None = None,
    sgd_paper: bool = False,
) -> list[float]:
    """AdamW over shuffled index batches (plain Adam with ``adam_betas`` when given, as April-GAN / AnomalyCLIP);
    ``loss_fn(indices)`` returns the batch loss. Returns per-epoch losses."""
    generator = torch.Generator().manual_seed(seed)
    params = list(params)
    schedule = None
    if sgd_paper:  # CoOp / CoCoOp (Dassl): SGD momentum 0.9, first epoch at constant 1e-5, then cosine over the epochs
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    elif adam_betas is not None:
        optimizer = torch.optim.Adam(params, lr=lr, betas=adam_betas)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        if schedule is not None and epoch == 0:
            for group in optimizer.param_groups:
                group["lr"] = 1e-5  # Dassl's constant warm-up epoch
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            loss = loss_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
        if schedule is not None:
            if epoch == 0:  # Dassl's ConstantWarmupScheduler: epoch 1 runs at the cosine's start, the base lr,
                for group in optimizer.param_groups:  # so epoch e >= 1 runs at cosine(e - 1) (its successor steps
                    group["lr"] = lr  # from the second epoch's end on; measured: benchmarks/coop_parity.py)
            else:
                schedule.step()
    return history


def abnormal_labels(labels: torch.Tensor, normal_index: int = 0) -> torch.Tensor:
    return (labels != normal_index).long()


class ContextPrompts(nn.Module):
    """CoOp-style learnable prompts: ``[V_1 .. V_m] <suffix>.`` for every suffix, through the frozen text tower.

    Args:
        backbone: the frozen CLIP (its text tower encodes the prompts).
        suffixes: one class phrase per prompt (e.g. the class names, or "object" / "damaged object").
        n_ctx: number m of learnable context tokens.
        shared: one context for all prompts (CoOp) or one per prompt (AnomalyCLIP's normal / abnormal contexts).
        seed: initialisation seed of the context vectors.

    ``forward(bias)`` with ``bias`` (B, width) adds an image-conditional shift to every context token (CoCoOp) and
    returns (B, P, D); without it, (P, D). Outputs are normalised.
    """

    PLACEHOLDER = "X"

    def __init__(self, backbone: ClipBackbone, suffixes: Sequence[str], n_ctx: int = 8, shared: bool = True,
                 seed: int = 0, init_words: str | None = None) -> None:
        super().__init__()
        encoder = backbone.text
        self.encoder = [encoder]  # a list keeps the frozen tower out of this module's parameters
        placeholders = " ".join([self.PLACEHOLDER] * n_ctx)
        tokens = encoder.tokenize([f"{placeholders} {s}." for s in suffixes])
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)
        self.length = int(self.eot.max()) + 1
        with torch.no_grad():
            self.register_buffer("base", encoder.embed_tokens(tokens).float().cpu(), persistent=False)
        # the placeholders follow the start-of-text token: positions 1..n_ctx in every prompt
        self.n_ctx, self.n_prompts, self.width = n_ctx, len(suffixes), encoder.width
        generator = torch.Generator().manual_seed(seed)
        shape = (1 if shared else len(suffixes), n_ctx, encoder.width)
        self.ctx = nn.Parameter(torch.randn(shape, generator=generator) * 0.02)
        if init_words is not None:  # CoCoOp: the context starts as the embeddings of e.g. "a photo of a"
            words = encoder.tokenize([init_words])
            with torch.no_grad():
                init = encoder.embed_tokens(words).float().cpu()[0, 1:1 + n_ctx]
            if int(words.argmax(dim=-1)) != n_ctx + 1:
                raise ValueError(f"{init_words!r} is not {n_ctx} tokens long")
            self.ctx.data.copy_(init.expand(shape))

    def forward(self, bias: torch.Tensor | None = None) -> torch.Tensor:
        encoder = self.encoder[0]
        ctx = self.ctx.expand(self.n_prompts, -1, -1)  # (P, m, width)
        if bias is None:
            emb = torch.cat([self.base[:, :1], ctx, self.base[:, 1 + self.n_ctx:]], dim=1)
            return F.normalize(encoder.encode_embeddings(emb, self.eot, self.length).float(), dim=-1)
        batch = bias.shape[0]
        ctx = ctx.unsqueeze(0) + bias[:, None, None, :]  # (B, P, m, width)
        base = self.base.unsqueeze(0).expand(batch, -1, -1, -1)
        emb = torch.cat([base[:, :, :1], ctx, base[:, :, 1 + self.n_ctx:]], dim=2).flatten(0, 1)
        text = encoder.encode_embeddings(emb, self.eot.repeat(batch), self.length).float()
        return F.normalize(text, dim=-1).view(batch, self.n_prompts, -1)


def probs_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3-class probabilities and the anomaly score 1 - P(normal) of a few-shot classifier."""
    probs = logits.float().softmax(dim=-1)
    return probs, 1.0 - probs[:, 0]


def val_nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Validation negative log-likelihood: the smooth criterion used for every method's hyperparameter choice."""
    return float(F.cross_entropy(logits.float(), labels.long()))
