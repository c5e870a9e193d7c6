"""Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Patchify -> fixed 2-D sin-cos position embedding -> adaLN-Zero transformer blocks conditioned on
timestep (+ class) -> adaptive final layer -> unpatchify. Optional cross-attention to a context
sequence (text tokens, as in PixArt-alpha) sits between self-attention and the MLP. Works in pixel
space (e.g. 1x32x32 MNIST) or latent space (4x32x32 SD latents). Attention runs through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).

Forward ``(x, t, y=None, context=None, context_mask=None)`` matches the U-Net so
``DiffusionModule`` drives either. Class label -1 is the null class (classifier-free guidance).
Named sizes: ``dit_from_name("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .embeddings import LabelEmbedder, TimestepEmbedder

# depth, hidden size, heads (Table 1 of the DiT paper)
DIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


# --------------------------------------------------------------------------- position embeddings
def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[sin(pos w_i), cos(pos w_i)]`` with ``w_i = 10000 ** (-i / (dim/2))`` (as in MAE / DiT)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1, 1) * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D embedding ``(grid_h * grid_w, dim)`` in row-major token order: the first half of
    the channels encodes the column, the second half the row (the DiT / MAE convention)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _bcast(m: Tensor, x: Tensor) -> Tensor:
    """Per-sample modulation ``(B, D)`` -> broadcastable to tokens ``(B, ..., L, D)``."""
    return m.reshape(m.shape[0], *([1] * (x.ndim - 2)), m.shape[-1])


# --------------------------------------------------------------------------- layers
class Attention(nn.Module):
    """Multi-head attention over the second-to-last axis; any leading axes are independent groups.

    Self-attention when ``context`` is None; otherwise queries from ``x``, keys/values from
    ``context`` ``(B, Lc, Dc)`` shared by every group of the same sample.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.cross = heads, context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: Tensor) -> Tensor:  # (G, L, D) -> (G, heads, L, D/heads)
        g, n, d = t.shape
        return t.reshape(g, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        h = x.reshape(-1, n, d)
        mask = None
        if self.cross:
            if context is None:
                raise ValueError("cross-attention layer called without a context")
            groups = h.shape[0] // context.shape[0]
            k, v = self.kv(context).chunk(2, dim=-1)
            k, v = (z.repeat_interleave(groups, dim=0) for z in (k, v))
            q = self.q(h)
            if context_mask is not None:
                mask = context_mask.bool().repeat_interleave(groups, dim=0)[:, None, None, :]
        else:
            q, k, v = self.qkv(h).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
        out = out.transpose(1, 2).reshape(h.shape[0], n, d)
        return self.proj(out).reshape(*lead, n, d)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class CrossMlpTail(nn.Module):
    """What every adaLN-Zero block ends with: optional cross-attention to a context (not gated; its
    zero-initialised output projection makes it start as a no-op), then the gated, modulated MLP.
    Blocks call :meth:`build_tail` in ``__init__`` and :meth:`tail` last in ``forward``."""

    def build_tail(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None) -> None:
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, heads, context_dim=context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def tail(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None,
             shift: Tensor, scale: Tensor, gate: Tensor) -> Tensor:
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, context_mask)
        return x + gate * self.mlp(modulate(self.norm2(x), shift, scale))


class DiTBlock(CrossMlpTail):
    """adaLN-Zero block: ``x + g1 * attn(mod(norm(x))) [+ cross] + g2 * mlp(mod(norm(x)))``.

    Tokens ``(B, ..., L, D)`` attend along ``L``; leading axes (e.g. frames) are independent.
    The modulation MLP is zero-initialised so the block starts as the identity.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.build_tail(dim, heads, mlp_ratio, context_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        mods = [_bcast(m, x) for m in self.adaLN_modulation(c).chunk(6, dim=-1)]
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        return self.tail(x, context, context_mask, shift2, scale2, gate2)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = (_bcast(m, x) for m in self.adaLN_modulation(c).chunk(2, dim=-1))
        return self.linear(modulate(self.norm(x), shift, scale))


def init_dit_weights(model: nn.Module) -> None:
    """DiT's initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output layers."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride:  # patch embedding: like a linear layer
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)
        elif isinstance(m, LabelEmbedder):
            nn.init.normal_(m.embedding.weight, std=0.02)
        elif isinstance(m, TimestepEmbedder):
            nn.init.normal_(m.mlp[0].weight, std=0.02)
            nn.init.normal_(m.mlp[2].weight, std=0.02)
        elif isinstance(m, (DiTBlock, FinalLayer)) or hasattr(m, "adaLN_modulation"):
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)
        if isinstance(m, Attention) and m.cross:  # cross-attention starts as a no-op too
            nn.init.zeros_(m.proj.weight)
        if isinstance(m, FinalLayer):
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)


# --------------------------------------------------------------------------- the network
class DiT(nn.Module):
    """Diffusion Transformer for images ``(B, C, H, W)``.

    Args:
        input_size: image (or latent) side length; must be divisible by ``patch_size``.
        in_channels: input channels (1 for MNIST pixels, 4 for SD latents).
        patch_size, hidden_size, depth, num_heads, mlp_ratio: the transformer.
        num_classes: class conditioning (``None``/0 = unconditional); label -1 is the null class.
        learn_sigma: output ``2 * in_channels`` channels (mean and variance, as in the paper; used
            for the paper's parameter counts). Keep it off with ``DiffusionModule``, whose simple
            loss compares the output with an ``in_channels`` target.
        context_dim: add cross-attention to a context sequence ``(B, L, context_dim)``.
        gradient_checkpointing: recompute block activations in backward (saves memory).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int | None = None,
                 learn_sigma: bool = False, context_dim: int | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes, self.gradient_checkpointing = num_classes or None, gradient_checkpointing
        self.grid = input_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if self.num_classes else None
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(self.make_block(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        init_dit_weights(self)

    def make_block(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None) -> nn.Module:
        """One transformer block (subclasses swap the block type here)."""
        return DiTBlock(dim, heads, mlp_ratio, context_dim)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, N, p*p*C)`` in the same layout as :meth:`unpatchify` reads."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor, channels: int | None = None) -> Tensor:
        """``(B, N, p*p*C)`` -> ``(B, C, H, W)`` (DiT's token layout: patch rows, patch columns, channels)."""
        c = channels or self.out_channels
        p, g = self.patch_size, int(math.isqrt(x.shape[1]))
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def embed(self, x: Tensor) -> Tensor:
        return self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)

    def condition(self, t: Tensor, y: Tensor | None, batch: int) -> Tensor:
        t = t.reshape(-1).expand(batch) if t.numel() in (1, batch) else t
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:  # no label given: the null class (unconditional)
                y = torch.full((batch,), -1, device=c.device, dtype=torch.long)
            c = c + self.y_embedder(y)
        elif y is not None:
            raise ValueError("class labels given to a DiT built without num_classes")
        return c

    def run_block(self, block: nn.Module, x: Tensor, c: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, context, context_mask, use_reentrant=False)
        return block(x, c, context, context_mask)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT built for ({self.in_channels}, {self.input_size}, {self.input_size}) inputs, "
                             f"got {tuple(x.shape[1:])}")
        h = self.embed(x)
        c = self.condition(t, y, x.shape[0]).to(h.dtype)
        for block in self.blocks:
            h = self.run_block(block, h, c, context, context_mask)
        return self.unpatchify(self.final_layer(h, c))


def parse_dit_name(name: str) -> tuple[int, int, int, int]:
    """``"DiT-XL/2"`` -> (depth, hidden size, heads, patch size)."""
    try:
        prefix, patch = name.split("/")
        size = prefix.split("-", 1)[1]
        depth, hidden, heads = DIT_SIZES[size]
        return depth, hidden, heads, int(patch)
    except (ValueError, KeyError, IndexError):
        names = [f"DiT-{s}/{p}" for s in DIT_SIZES for p in (2, 4, 8)]
        raise ValueError(f"unknown DiT name {name!r}; choose one of {', '.join(names)}") from None


def dit_from_name(name: str, **kwargs) -> DiT:
    """Build a named DiT, e.g. ``dit_from_name("DiT-S/2", input_size=32, in_channels=4, num_classes=1000)``."""
    depth, hidden, heads, patch = parse_dit_name(name)
    return DiT(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **kwargs)


DIT_MODELS = {f"DiT-{s}/{p}": (lambda s=s, p=p, **kw: dit_from_name(f"DiT-{s}/{p}", **kw))
              for s in DIT_SIZES for p in (2, 4, 8)}
