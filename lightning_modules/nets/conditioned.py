"""A denoiser wrapper that concatenates image-shaped conditions to the noisy input.

``ConditionedNet(net, cond_channels)`` calls ``net(cat([x_t, cond_image], 1), t, **kw)``: the usual
way to condition a U-Net on spatial inputs (keypoint maps, known pixels, masks), as in SR3 and
inpainting models. The wrapped net's ``in_channels`` must equal data channels + ``cond_channels``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ConditionedNet(nn.Module):
    def __init__(self, net: nn.Module, cond_channels: int) -> None:
        super().__init__()
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        self.net, self.cond_channels = net, cond_channels
        self.in_channels = getattr(net, "in_channels", None)

    def forward(self, x: Tensor, t: Tensor, cond_image: Tensor | None = None, **kw) -> Tensor:
        if self.cond_channels:
            if cond_image is None:
                raise ValueError(f"this net expects cond_image with {self.cond_channels} channels, got none")
            if cond_image.shape[1] != self.cond_channels or cond_image.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"cond_image must be (B, {self.cond_channels}, {x.shape[-2]}, {x.shape[-1]}), "
                                 f"got {tuple(cond_image.shape)}")
            if cond_image.shape[0] != x.shape[0]:  # guidance batches (cond, uncond) share one condition
                cond_image = cond_image.repeat(x.shape[0] // cond_image.shape[0], 1, 1, 1)
            x = torch.cat([x, cond_image.to(x.dtype)], 1)
        return self.net(x, t, **kw)
