"""Seam score: how sharp an image changes across the boundary of a pasted region.

``seam_score(images, masks)`` is the mean gradient magnitude (central differences, L2 over RGB,
images in [-1, 1]) over a band around the boundary of each mask: pixels within ``width`` pixels of
the mask's edge on either side, or, with ``radii=(lo, hi)``, every pixel between the mask eroded by
``width - lo`` and dilated by ``hi + width`` (the whole zone where blends with different radii can
leave their cut). A composite with a visible seam (colour jump, misaligned content) has a higher
score than a real photo over the same band around its own hand; report generated scores next to
the real reference (and their ratio), and compare blends over the same band.

Where the cut lies matters. Along the hand's own outline (radius 0) a real photo has its sharpest
edge, skin against background, and a seam there hides behind it: every blend then scores like a
real photo. A cut a few pixels outside the hand (``experiments.hands`` cuts at radius 2) runs
through background, where a real photo is smooth, so whatever edge a blend leaves there is seam.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.mask_expansion import dilate_mask


def gradient_magnitude(images: Tensor) -> Tensor:
    """``(B, 1, H, W)`` gradient magnitude (central differences, replicate border), L2 over channels."""
    x = F.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    gx = (x[..., 1:-1, 2:] - x[..., 1:-1, :-2]) / 2
    gy = (x[..., 2:, 1:-1] - x[..., :-2, 1:-1]) / 2
    return (gx ** 2 + gy ** 2).sum(1, keepdim=True).sqrt()


def boundary_band(masks: Tensor, width: int = 1, radii: tuple[int, int] = (0, 0)) -> Tensor:
    """``(B, 1, H, W)`` band ``dilate(m, hi + w) - dilate(m, lo - w)`` for ``radii=(lo, hi)``: with the
    default ``(0, 0)``, the pixels within ``width`` of the mask boundary on either side."""
    lo, hi = (int(r) for r in radii)
    if hi < lo:
        raise ValueError(f"seam band radii must be (lo, hi) with lo <= hi, got {radii}")
    return dilate_mask(masks, hi + width) - dilate_mask(masks, lo - width)


def seam_score(images: Tensor, masks: Tensor, width: int = 1, reduce: bool = True,
               radii: tuple[int, int] = (0, 0)) -> Tensor:
    """Mean gradient magnitude over each mask's band (per image if ``reduce=False``); see the module doc."""
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"seam_score expects images (B,C,H,W) and masks (B,1,H,W), got {tuple(images.shape)} "
                         f"and {tuple(masks.shape)}")
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mask {tuple(masks.shape)} does not match images {tuple(images.shape)}: one (1, H, W) "
                         f"mask per image at the image's resolution")
    band = boundary_band(masks.to(images.device), width, radii)
    g = gradient_magnitude(images)
    per = (g * band).sum((1, 2, 3)) / band.sum((1, 2, 3)).clamp(min=1)
    valid = band.sum((1, 2, 3)) > 0
    if not reduce:
        return torch.where(valid, per, torch.full_like(per, float("nan")))
    return per[valid].mean() if valid.any() else torch.tensor(float("nan"))
