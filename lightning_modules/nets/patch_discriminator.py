"""PatchGAN discriminator (Isola et al. 2017) and the hinge losses used to sharpen autoencoders.

Outputs one logit per overlapping patch. GroupNorm instead of BatchNorm keeps it DDP-safe and
independent of the batch composition.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import norm


class PatchDiscriminator(nn.Module):
    """``num_layers`` stride-2 4x4 convolutions, then a stride-1 layer and a 1-channel logit map."""

    def __init__(self, in_channels: int = 1, base_channels: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, num_layers + 1):
            cout = base_channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, cout, 4, stride=stride, padding=1, bias=False), norm(cout), nn.LeakyReLU(0.2)]
            ch = cout
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]`` (halved, as in taming)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator (decoder) loss ``-E[D(x_hat)]``."""
    return -logits_fake.mean()
