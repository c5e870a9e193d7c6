"""KL-regularised convolutional autoencoder: the first stage of latent diffusion (Rombach et al. 2022).

The encoder maps an image ``(B, C, H, W)`` to a diagonal Gaussian over latents
``(B, z, H/f, W/f)``; the decoder maps latents back to images. ``f = 2 ** (levels - 1)`` is the
downsampling factor. Plain ``nn.Module``: no Lightning here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import norm


class DiagonalGaussian:
    """``N(mean, diag(exp(logvar)))`` over latents, with its KL divergence to ``N(0, I)``."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: Tensor) -> "DiagonalGaussian":
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """``KL(q || N(0, I))`` per item, summed over latent dimensions: ``0.5 * sum(mu^2 + var - 1 - logvar)``."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                   norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class SelfAttention(nn.Module):
    """Single-head attention over pixels (used once at the lowest resolution)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def default_channel_mult(levels: int) -> list[int]:
    return [min(2 ** i, 4) for i in range(levels)]


class Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, base_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attention: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        layers, ch = [], base_channels
        for i, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResnetBlock(ch, base_channels * mult))
                ch = base_channels * mult
            if i < len(channel_mult) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        layers += [ResnetBlock(ch, ch)] + ([SelfAttention(ch)] if attention else []) + [ResnetBlock(ch, ch)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)))


class Decoder(nn.Module):
    def __init__(self, out_channels: int, latent_channels: int, base_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attention: bool) -> None:
        super().__init__()
        ch = base_channels * channel_mult[-1]
        self.stem = nn.Conv2d(latent_channels, ch, 3, padding=1)
        layers = [ResnetBlock(ch, ch)] + ([SelfAttention(ch)] if attention else []) + [ResnetBlock(ch, ch)]
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResnetBlock(ch, base_channels * mult))
                ch = base_channels * mult
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.body(self.stem(z)))


class Autoencoder(nn.Module):
    """KL autoencoder ``x -> q(z|x) -> x_hat``.

    Args:
        in_channels: image channels.
        latent_channels: channels of the latent ``z``.
        downsample_factor: ``f``, a power of two; latents are ``H/f x W/f``.
        base_channels: width of the first level.
        channel_mult: width multipliers per level (``log2(f) + 1`` entries); default ``1, 2, 4, 4...``.
        num_res_blocks: residual blocks per level in the encoder (decoder has one more).
        attention: self-attention at the lowest resolution.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, downsample_factor: int = 4,
                 base_channels: int = 32, channel_mult: Sequence[int] | None = None, num_res_blocks: int = 1,
                 attention: bool = False) -> None:
        super().__init__()
        if downsample_factor < 1 or downsample_factor & (downsample_factor - 1):
            raise ValueError(f"downsample_factor must be a power of two, got {downsample_factor}")
        levels = int(math.log2(downsample_factor)) + 1
        channel_mult = list(channel_mult) if channel_mult is not None else default_channel_mult(levels)
        if len(channel_mult) != levels:
            raise ValueError(f"downsample_factor={downsample_factor} needs {levels} channel_mult entries, "
                             f"got {channel_mult}")
        self.in_channels, self.latent_channels, self.downsample_factor = in_channels, latent_channels, downsample_factor
        self.encoder = Encoder(in_channels, latent_channels, base_channels, channel_mult, num_res_blocks, attention)
        self.decoder = Decoder(in_channels, latent_channels, base_channels, channel_mult, num_res_blocks, attention)

    def latent_shape(self, data_shape: Sequence[int]) -> tuple[int, int, int]:
        """Latent item shape for a data item shape ``(C, H, W)``."""
        c, h, w = data_shape
        f = self.downsample_factor
        if c != self.in_channels or h % f or w % f:
            raise ValueError(f"data of shape {tuple(data_shape)} does not fit an autoencoder with {self.in_channels} "
                             f"input channels and downsampling factor {f}")
        return self.latent_channels, h // f, w // f

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    @property
    def last_layer_weight(self) -> Tensor:
        """The decoder's output convolution weight (for adaptive GAN-loss weighting)."""
        return self.decoder.head[-1].weight
