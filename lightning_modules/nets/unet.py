"""A DDPM / ADM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021).

Residual blocks carry the time (and class) embedding, self-attention sits at chosen
resolutions, optional cross-attention reads a context sequence (e.g. text tokens).
Plain ``nn.Module``: no Lightning here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .embeddings import LabelEmbedder, timestep_embedding


def norm(ch: int, groups: int = 32) -> nn.GroupNorm:
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, scale_shift: bool = True) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout * (2 if scale_shift else 1))
        self.norm2, self.drop = norm(cout), nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, plus optional cross-attention to a context."""

    def __init__(self, ch: int, heads: int = 4, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv2d(ch, ch, 1))
        self.cross = None
        if context_dim is not None:
            self.cross_norm = norm(ch)
            self.q = nn.Linear(ch, ch)
            self.kv = nn.Linear(context_dim, 2 * ch)
            self.cross = zero(nn.Linear(ch, ch))

    def _split(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hh * ww).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        h = h.transpose(1, 2).reshape(b, hh * ww, c).transpose(1, 2).reshape(b, c, hh, ww)
        x = x + self.proj(h)
        if self.cross is not None and context is not None:
            t = self.cross_norm(x).flatten(2).transpose(1, 2)
            kc, vc = self.kv(context).chunk(2, dim=-1)
            mask = None if context_mask is None else context_mask[:, None, None, :].bool()
            h = F.scaled_dot_product_attention(self._split(self.q(t)), self._split(kc), self._split(vc), attn_mask=mask)
            h = self.cross(h.transpose(1, 2).reshape(b, hh * ww, c))
            x = x + h.transpose(1, 2).reshape(b, c, hh, ww)
        return x


class UNet(nn.Module):
    """U-Net denoiser ``net(x_t, t, y=None, context=None) -> prediction``.

    Args:
        in_channels / out_channels: channels of the (possibly condition-concatenated) input and output.
        base_channels, channel_mult: width at each resolution level.
        num_res_blocks: residual blocks per level on the way down.
        attention_resolutions: feature-map sizes (e.g. ``[16]``) where self-attention is used.
        image_size: input height/width, used to place attention and validate inputs.
        num_classes: enables a class embedding (plus a null class for guidance).
        context_dim: enables cross-attention to a ``context`` sequence of that width.
        gradient_checkpointing: recompute block activations in backward to save memory.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), image_size: int = 32, dropout: float = 0.0,
                 heads: int = 4, num_classes: int | None = None, context_dim: int | None = None,
                 scale_shift: bool = True, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_classes, self.context_dim = num_classes, context_dim
        self.gradient_checkpointing = gradient_checkpointing
        levels = len(channel_mult)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**(levels-1) = {2 ** (levels - 1)}")
        self.base_channels = base_channels
        emb_dim = base_channels * 4
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = LabelEmbedder(num_classes, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            mods = [ResBlock(cin, cout, emb_dim, dropout, scale_shift)]
            if res in attention_resolutions:
                mods.append(AttentionBlock(cout, heads, context_dim))
            return nn.ModuleList(mods)

        self.down, skips, ch, res = nn.ModuleList(), [base_channels], base_channels, image_size
        for i, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, res))
                ch = base_channels * mult
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout, scale_shift), AttentionBlock(ch, heads, context_dim),
                                  ResBlock(ch, ch, emb_dim, dropout, scale_shift)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for j in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base_channels * mult, res))
                ch = base_channels * mult
                if i > 0 and j == num_res_blocks:
                    self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
                    res *= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def _run(self, mods: nn.ModuleList, h: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        for m in mods:
            if isinstance(m, ResBlock):
                h = checkpoint(m, h, emb, use_reentrant=False) if self.gradient_checkpointing and self.training else m(h, emb)
            elif isinstance(m, AttentionBlock):
                h = m(h, context, context_mask)
            else:
                h = m(h)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), -1, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(y)
        h = self.stem(x)
        hs = [h]
        for mods in self.down:
            h = self._run(mods, h, emb, context, context_mask)
            hs.append(h)
        h = self._run(self.mid, h, emb, context, context_mask)
        for mods in self.up:
            if isinstance(mods[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(mods, h, emb, context, context_mask)
        return self.out(h)
