"""Patch-wise image-language fusion (paper Sec. 2.3): text prototypes attend to the image's patch features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchLanguageFusion(nn.Module):
    """M-head cross-attention that refines the normal/abnormal text prototypes with the image's patch tokens.

    Query = the 2 text prototypes, key = value = the adapted patch tokens of one layer; the attended result is added
    to the prototypes (residual). The output projection is zero-initialised so that, before training, the fused
    prototypes equal the unfused ones.

    Args:
        dim: joint embedding dimension D.
        num_heads: M. Must divide D.
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion heads ({num_heads}) must divide the embedding dimension ({dim})")
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, prototypes: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, 2, D) prototypes, (B, N, D) patches -> (B, 2, D) fused, normalised prototypes."""
        attended, _ = self.attention(prototypes, patches, patches, need_weights=False)
        return F.normalize(prototypes + attended, dim=-1)
