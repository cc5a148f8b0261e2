"""Multi-level linear adapters (paper Sec. 2.1, after April-GAN): patch tokens of each tapped block -> joint space."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MultiLevelPatchAdapter(nn.Module):
    """One linear map per tapped layer, projecting (W)-dim patch tokens into the D-dim image-text space.

    Args:
        n_layers: number L of tapped blocks.
        in_dim: vision width W.
        out_dim: joint embedding dimension D.
    """

    def __init__(self, n_layers: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(n_layers))

    def forward(self, patch_tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L, N, W) -> L tensors (B, N, D), L2-normalised along D.

        A list rather than one stacked tensor: indexing a stacked tensor per layer makes autograd allocate a
        full-size zero gradient for every index (measured: 15% of a ViT-L training step on CPU).
        """
        if patch_tokens.shape[1] != len(self.linears):
            raise ValueError(f"expected patch tokens of {len(self.linears)} layers, got {patch_tokens.shape[1]}")
        return [F.normalize(linear(tokens), dim=-1) for linear, tokens in zip(self.linears, patch_tokens.unbind(1))]
