"""Video diffusion transformer in the style of Latte (Ma et al. 2024, "Latte: Latent Diffusion
Transformer for Video Generation").

Each frame of ``(B, T, C, H, W)`` is patch-embedded on its own (Latte's "uniform frame patch
embedding"), giving tokens ``(B, T, N, D)`` with a fixed 2-D sin-cos spatial and a 1-D sin-cos
temporal position embedding. The transformer is one of Latte's four model variants (Sec. 3.2):

- ``interleaved`` (Variant 1): spatial and temporal DiT blocks alternate.
- ``late_fusion`` (Variant 2): all spatial blocks first, then all temporal blocks.
- ``factorised`` (Variant 3): one block holds spatial attention then temporal attention then MLP.
- ``joint``: full spatio-temporal self-attention over all ``T * N`` tokens (the usual baseline).

(Latte's Variant 4, heads split between spatial and temporal attention, is not implemented.)
A spatial block attends within a frame; a temporal block attends along time at one patch
position. Blocks are the image DiT's adaLN-Zero blocks, so an untrained network outputs zeros.
``conv_stem > 0`` (not in Latte; off by default) puts ``conv_stem`` 3x3 convolutions (``conv_width``
channels, SiLU) in front of each frame's patch embedding and a 3x3 convolution after unpatchify, so
the layers next to the pixels (or latents) are translation-equivariant below the patch size; with
``conv_temporal=True`` those convolutions are 3x3x3 over (time, height, width), so they can also
follow content that moves by less than a patch from frame to frame.
``independent_frames=True`` skips every temporal operation (temporal attention and temporal
position embedding): frames are then denoised as independent images (joint image-video training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .dit import Attention, CrossMlpTail, DiT, DiTBlock, FinalLayer, _bcast, init_dit_weights, modulate, sincos_1d

VARIANTS = ("interleaved", "late_fusion", "factorised", "joint")


class FactorisedBlock(CrossMlpTail):
    """Latte Variant 3: spatial attention, temporal attention and MLP inside one adaLN-Zero block.

    Tokens ``(B, T, N, D)``. Each of the three sub-layers has its own shift / scale / gate.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm_s = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(dim, heads)
        self.norm_t = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_t = Attention(dim, heads)
        self.build_tail(dim, heads, mlp_ratio, context_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def spatial(self, x: Tensor, mods: list[Tensor]) -> Tensor:
        shift, scale, gate = mods[0:3]
        return x + gate * self.attn_s(modulate(self.norm_s(x), shift, scale))

    def temporal(self, x: Tensor, mods: list[Tensor]) -> Tensor:
        shift, scale, gate = (m.transpose(1, 2) for m in mods[3:6])
        xt = x.transpose(1, 2)  # (B, N, T, D): attend along time
        return x + (gate * self.attn_t(modulate(self.norm_t(xt), shift, scale))).transpose(1, 2)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                independent_frames: bool = False) -> Tensor:
        mods = [_bcast(m, x) for m in self.adaLN_modulation(c).chunk(9, dim=-1)]
        x = self.spatial(x, mods)
        if not independent_frames:
            x = self.temporal(x, mods)
        return self.tail(x, context, context_mask, *mods[6:9])


class VideoDiT(DiT):
    """Latte-style video DiT on ``(B, T, C, H, W)``; forward ``(x, t, y=None, context=None)``.

    Args:
        num_frames: clip length ``T`` (the temporal position table's size).
        variant: ``interleaved`` | ``late_fusion`` | ``factorised`` | ``joint`` (see module doc).
        depth: number of transformer blocks; for ``interleaved`` / ``late_fusion`` it must be even
            (half spatial, half temporal), as in Latte-XL's 28 = 14 + 14.
        conv_stem: 3x3 convolutions before the patch embedding (0 = Latte's plain patch embedding);
            when > 0 a 3x3 convolution also follows unpatchify.
        conv_width: channels of those convolutions.
        conv_temporal: make the stem and head convolutions 3-D (3x3x3 over frames and pixels); with
            ``independent_frames`` only their centre frame slice acts, so images stay independent.
        other arguments: as :class:`DiT`.
    """

    def __init__(self, num_frames: int = 16, variant: str = "interleaved", input_size: int = 32, patch_size: int = 2,
                 in_channels: int = 4, hidden_size: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, num_classes: int | None = None, learn_sigma: bool = False,
                 context_dim: int | None = None, gradient_checkpointing: bool = False, conv_stem: int = 0,
                 conv_width: int = 64, conv_temporal: bool = False) -> None:
        if conv_stem < 0 or conv_width < 1:
            raise ValueError(f"conv_stem must be >= 0 and conv_width >= 1, got {conv_stem} and {conv_width}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown video DiT variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if variant in ("interleaved", "late_fusion") and depth % 2:
            raise ValueError(f"variant {variant!r} needs an even depth (spatial + temporal blocks), got {depth}")
        self._variant = variant  # read by make_block during DiT.__init__
        super().__init__(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                         hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         num_classes=num_classes, learn_sigma=learn_sigma, context_dim=context_dim,
                         gradient_checkpointing=gradient_checkpointing)
        self.num_frames, self.variant = num_frames, variant
        self.conv_width, self.conv_temporal = conv_width, bool(conv_temporal and conv_stem)
        self.stem = self.head = None
        if conv_stem:
            conv = nn.Conv3d if self.conv_temporal else nn.Conv2d
            layers: list[nn.Module] = []
            for i in range(conv_stem):
                layers += [conv(in_channels if i == 0 else conv_width, conv_width, 3, padding=1), nn.SiLU()]
            self.stem = nn.Sequential(*layers)
            self.x_embedder = nn.Conv2d(conv_width, hidden_size, patch_size, stride=patch_size)
            self.final_layer = FinalLayer(hidden_size, patch_size, conv_width)  # features for the head
            self.head = conv(conv_width, self.out_channels, 3, padding=1)
            for m in (self.x_embedder, self.final_layer):  # DiT's init for the replaced layers: zero output
                init_dit_weights(m)
            nn.init.zeros_(self.head.bias)
        # what each block attends over: "s" within a frame, "t" along time, "st" everything, "f" factorised
        self.block_kinds = {"interleaved": ["s", "t"] * (depth // 2),
                            "late_fusion": ["s"] * (depth // 2) + ["t"] * (depth // 2),
                            "factorised": ["f"] * depth, "joint": ["st"] * depth}[variant]
        self.register_buffer("temp_embed", sincos_1d(hidden_size, torch.arange(num_frames)).float()[None, :, None],
                             persistent=False)

    def _conv(self, layer: nn.Module, x: Tensor, independent: bool) -> Tensor:
        """Apply a stem or head ``layer`` to frames ``(B, T, C, H, W)``; returns ``(B*T, C', H, W)``."""
        if not self.conv_temporal:
            return layer(x.flatten(0, 1))
        if independent:  # every frame its own clip of length 1: only the kernels' centre slice acts
            return layer(x.flatten(0, 1).unsqueeze(2)).squeeze(2)
        y = layer(x.transpose(1, 2))  # (B, C', T, H, W)
        return y.transpose(1, 2).flatten(0, 1)

    def make_block(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None) -> nn.Module:
        if self._variant == "factorised":
            return FactorisedBlock(dim, heads, mlp_ratio, context_dim)
        return DiTBlock(dim, heads, mlp_ratio, context_dim)

    def _block(self, block: nn.Module, kind: str, h: Tensor, c: Tensor, context: Tensor | None,
               context_mask: Tensor | None, independent: bool) -> Tensor:
        b, t, n, d = h.shape
        if kind == "f":
            args = (h, c, context, context_mask, independent)
        elif kind == "s":
            args = (h, c, context, context_mask)
        elif kind == "t":
            if independent:
                return h
            return self._call(block, h.transpose(1, 2), c, context, context_mask).transpose(1, 2)
        else:  # joint: independent frames fall back to per-frame attention
            args = (h if independent else h.reshape(b, t * n, d), c, context, context_mask)
            return self._call(block, *args).reshape(b, t, n, d)
        return self._call(block, *args)

    def _call(self, block: nn.Module, *args) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, independent_frames: bool = False) -> Tensor:
        if x.ndim != 5 or tuple(x.shape[2:]) != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"VideoDiT expects (B, T, {self.in_channels}, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        b, nt = x.shape[:2]
        if nt > self.num_frames:
            raise ValueError(f"clip has {nt} frames but the network was built for num_frames={self.num_frames}")
        frames_in = self._conv(self.stem, x, independent_frames) if self.stem is not None else x.flatten(0, 1)
        h = self.embed(frames_in)  # per-frame patch embedding + spatial position
        h = h.reshape(b, nt, *h.shape[1:])
        if not independent_frames:
            h = h + self.temp_embed[:, :nt].to(h.dtype)
        c = self.condition(t, y, b).to(h.dtype)
        for block, kind in zip(self.blocks, self.block_kinds):
            h = self._block(block, kind, h, c, context, context_mask, independent_frames)
        out = self.final_layer(h, c).flatten(0, 1)  # (B*T, N, p*p*C)
        if self.head is not None:
            feats = F.silu(self.unpatchify(out, channels=self.conv_width))
            frames = self._conv(self.head, feats.reshape(b, nt, *feats.shape[1:]), independent_frames)
        else:
            frames = self.unpatchify(out)
        return frames.reshape(b, nt, self.out_channels, self.input_size, self.input_size)


__all__ = ["VideoDiT", "FactorisedBlock", "DiTBlock", "VARIANTS"]
