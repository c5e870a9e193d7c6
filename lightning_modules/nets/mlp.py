"""Residual MLP denoiser for low-dimensional data (2-D toys)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedder, TimestepEmbedder


class ResidualMLPBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h))) + self.emb(emb)))


class MLPDenoiser(nn.Module):
    """``net(x_t, t, y=None) -> prediction`` for ``x_t`` of shape ``(B, dim)``."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.time = TimestepEmbedder(hidden, freq_dim=64)
        self.label = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser expects input (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.time(t.expand(x.shape[0]) if t.ndim == 0 else t)
        if self.label is not None:
            emb = emb + self.label(y if y is not None else t.new_full((x.shape[0],), -1))
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, emb)
        return self.out(h)
