"""Patch-wise image-language fusion (paper Sec. 2.3): text prototypes attend to the image's patch features."""

from __future__ import annotations

import math

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
        """(B, 2, D) prototypes, (B, N, D) patches -> (B, 2, D) fused, normalised prototypes.

        Computes exactly :class:`torch.nn.MultiheadAttention` with this module's weights, but reassociated for few
        queries and many keys: the key projection is applied to the queries (``q W_k`` instead of ``W_k t`` for
        every patch t; the key bias adds the same constant to every score and cancels in the softmax) and the value
        projection to the attention-pooled patches (the weights sum to one, so the value bias passes through).
        Nothing of size N x D x D is ever formed: a ViT-L training step on CPU is several times faster, and the
        parameters (and checkpoints) are those of ``nn.MultiheadAttention``.
        """
        attn = self.attention
        batch, n_protos = prototypes.shape[:2]
        dim, heads, head_dim = attn.embed_dim, attn.num_heads, attn.head_dim  # Python ints: constant when traced
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, _, b_v = attn.in_proj_bias.chunk(3)
        q = (prototypes @ w_q.T + b_q).view(batch, n_protos, heads, head_dim)
        q_in_patch_space = torch.einsum("bpmh,mhd->bpmd", q, w_k.view(heads, head_dim, dim))
        scores = torch.einsum("bpmd,bnd->bpmn", q_in_patch_space, patches) / math.sqrt(head_dim)
        pooled = torch.einsum("bpmn,bnd->bpmd", scores.softmax(dim=-1), patches)
        values = torch.einsum("bpmd,mhd->bpmh", pooled, w_v.view(heads, head_dim, dim)) + b_v.view(heads, head_dim)
        attended = attn.out_proj(values.reshape(batch, n_protos, dim))
        return F.normalize(prototypes + attended, dim=-1)
