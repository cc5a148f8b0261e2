"""Memory-boosted classification (paper Sec. 2.2): few-shot image memory + frozen lesion-aware text embeddings."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ClassTokenMiniNet(nn.Module):
    """The shared MiniNet that projects the CLIP class token (paper Sec. 2.4).

    Its output is used both by the classifier and by the image-aware prompt learner, so both tasks refine it. It is
    residual with a zero-initialised last layer: before training it returns the CLIP feature unchanged, so few-shot
    training starts from CLIP's zero-shot behaviour instead of from noise.
    """

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(dim // reduction, 8)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        x = F.normalize(cls_token.float(), dim=-1)
        return F.normalize(x + self.net(x), dim=-1)


class FewShotMemoryBank(nn.Module):
    """Class logits from frozen class text embeddings plus a learnable few-shot image memory (Tip-Adapter style).

    ``logits = text_scale * f @ T^T + alpha * mean_c exp(-beta * (1 - f @ K^T))`` (the memory affinity averaged
    over each class's entries) with f the shared
    feature, T the frozen lesion-aware class text embeddings, K the memory keys (initialised from the few-shot
    images' class tokens and refined by training) and the memory values the shots' one-hot labels.

    Args:
        class_text: (C, D) frozen, normalised class text embeddings.
        alpha: weight of the memory term (on mean affinities, so it does not scale with the shot count).
        beta: sharpness of the memory affinity.
        text_scale: CLIP's logit scale for the text term.
        use_memory: False gives the ablation without the memory bank (text term only).
    """

    def __init__(
        self,
        class_text: torch.Tensor,
        alpha: float = 10.0,
        beta: float = 5.5,
        text_scale: float = 100.0,
        use_memory: bool = True,
    ) -> None:
        super().__init__()
        self.register_buffer("class_text", F.normalize(class_text.float(), dim=-1))
        self.alpha, self.beta, self.text_scale, self.use_memory = alpha, beta, text_scale, use_memory
        dim = class_text.shape[1]
        # Empty until setup(); the checkpoint loader resizes these to the saved shot count.
        self.keys = nn.Parameter(torch.zeros(0, dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return self.class_text.shape[0]

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def setup(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the memory with the (n, D) shared features of the few-shot images and their class indices."""
        if features.shape[0] != labels.shape[0]:
            raise ValueError("memory features and labels differ in length")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"memory labels must be in [0, {self.num_classes})")
        self.keys = nn.Parameter(F.normalize(features.detach().float(), dim=-1).to(self.class_text.device))
        self.labels = labels.detach().long().to(self.class_text.device)

    def resize_(self, n: int) -> None:
        """Give the memory room for ``n`` entries (used before loading a checkpoint)."""
        dim = self.class_text.shape[1]
        self.keys = nn.Parameter(torch.zeros(n, dim, device=self.class_text.device))
        self.labels = torch.zeros(n, dtype=torch.long, device=self.class_text.device)

    def forward(self, shared: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) normalised shared features -> (B, C) class logits.

        Args:
            exclude: optional (B,) memory index of each sample (-1: none). During training the shots are also
                the memory; leaving a sample's own entry out stops the memory from trivially classifying it
                (leave-one-out), so the classifier still receives a learning signal.
        """
        logits = self.text_scale * shared @ self.class_text.t()
        if not self.use_memory or self.size == 0:
            return logits
        keys = F.normalize(self.keys, dim=-1)
        affinity = torch.exp(-self.beta * (1.0 - shared @ keys.t()))  # (B, n)
        if exclude is not None:
            keep = torch.ones_like(affinity)
            rows = (exclude >= 0).nonzero().flatten()
            keep[rows, exclude[rows]] = 0.0
            affinity = affinity * keep
        values = F.one_hot(self.labels, self.num_classes).to(affinity.dtype)
        # Mean affinity per class (Tip-Adapter sums): the term then means the same for k = 4 or 16 shots.
        per_class = values.sum(0).clamp(min=1.0)
        return logits + self.alpha * (affinity @ values) / per_class
