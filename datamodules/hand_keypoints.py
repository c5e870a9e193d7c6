"""MediaPipe 21-point hand keypoints: validation, rendering to condition maps, square hand crops.

Coordinates are normalised image coordinates ``(x, y)`` in [0, 1] (MediaPipe's convention): a
keypoint at ``u`` lies at ``u * W`` pixels from the left edge, and pixel ``i`` has its centre at
``i + 0.5``. Rendering and cropping both use this convention, so they are resolution independent
and crop -> uncrop is the identity up to resampling.

Crop boxes are ``(cx, cy, side)`` in normalised frame coordinates: the square of side ``side``
(a fraction of the frame width/height) centred at ``(cx, cy)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataError

NUM_JOINTS = 21
# Bones grouped into condition channels: palm, thumb, index, middle, ring, little.
BONE_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 5), (5, 9), (9, 13), (13, 17), (0, 17)),
    ((0, 1), (1, 2), (2, 3), (3, 4)),
    ((5, 6), (6, 7), (7, 8)),
    ((9, 10), (10, 11), (11, 12)),
    ((13, 14), (14, 15), (15, 16)),
    ((17, 18), (18, 19), (19, 20)),
)
MODES = ("skeleton", "heatmap", "both")


def condition_channels(mode: str) -> int:
    """Number of channels :func:`render_keypoints` produces for ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown keypoint rendering mode {mode!r}; choose one of {', '.join(MODES)}")
    return {"skeleton": len(BONE_GROUPS), "heatmap": NUM_JOINTS, "both": len(BONE_GROUPS) + NUM_JOINTS}[mode]


def check_keypoints(kp: Tensor, min_visible: int = 15, tolerance: float = 0.1, name: str = "keypoints") -> Tensor:
    """Validate ``(B, 21, 2|3)`` normalised keypoints and return their ``(B, 21, 2)`` x, y.

    Missing joints are NaN. Raises :class:`DataError` when a hand has fewer than ``min_visible``
    joints, or a joint lies more than ``tolerance`` (fraction of the frame) outside the image.
    """
    if not isinstance(kp, Tensor):
        kp = torch.as_tensor(kp, dtype=torch.float32)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1] != NUM_JOINTS or kp.shape[2] not in (2, 3):
        raise DataError(f"{name} must have shape (B, {NUM_JOINTS}, 2) or (B, {NUM_JOINTS}, 3) in MediaPipe's "
                        f"21-point order, got {tuple(kp.shape)}")
    xy = kp[..., :2].float()
    visible = torch.isfinite(xy).all(-1)
    n_vis = visible.sum(1)
    if (n_vis < min_visible).any():
        bad = torch.nonzero(n_vis < min_visible).flatten().tolist()
        raise DataError(f"{name}: hands {bad[:8]} have only {n_vis[bad[0]].item()} detected joints (need at least "
                        f"{min_visible} of {NUM_JOINTS}); drop undetected hands (detected == False) or lower min_visible")
    lo, hi = -tolerance, 1.0 + tolerance
    outside = visible & ((xy < lo) | (xy > hi)).any(-1)
    if outside.any():
        b, j = torch.nonzero(outside)[0].tolist()
        raise DataError(f"{name}: joint {j} of hand {b} is at {xy[b, j].tolist()}, outside the image; keypoints are "
                        f"normalised (x, y) in [0, 1] (allowed margin {tolerance}). Pixel coordinates? divide by the size")
    return xy


def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def render_keypoints(kp: Tensor, size: int | tuple[int, int], mode: str = "skeleton", sigma: float = 1.0) -> Tensor:
    """Render keypoints ``(B, 21, 2)`` (normalised, NaN = missing) to maps ``(B, C, H, W)`` in [0, 1].

    ``skeleton``: one channel per bone group, ``exp(-d^2 / 2 sigma^2)`` of the distance ``d`` (pixels)
    to the nearest bone segment of the group. ``heatmap``: one Gaussian per joint. ``both``: stacked.
    Deterministic; missing joints (and bones touching them) are left out.
    """
    h, w = (size, size) if isinstance(size, int) else size
    condition_channels(mode)
    kp = kp.float()
    b = kp.shape[0]
    gy, gx = _pixel_grid(h, w, kp.device)
    px, py = gx * w, gy * h                     # pixel centres in pixel units
    kx, ky = kp[..., 0] * w, kp[..., 1] * h      # (B, J)
    maps = []
    if mode in ("skeleton", "both"):
        for group in BONE_GROUPS:
            best = torch.full((b, h, w), float("inf"), device=kp.device)
            for i, j in group:
                ax, ay, bx, by = kx[:, i, None, None], ky[:, i, None, None], kx[:, j, None, None], ky[:, j, None, None]
                dx, dy = bx - ax, by - ay
                len2 = (dx * dx + dy * dy).clamp(min=1e-8)
                s = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0, 1)
                d2 = (px - (ax + s * dx)) ** 2 + (py - (ay + s * dy)) ** 2
                best = torch.minimum(best, torch.nan_to_num(d2, nan=float("inf")))
            maps.append(torch.exp(-best / (2 * sigma ** 2)))
    if mode in ("heatmap", "both"):
        d2 = (px - kx[..., None, None]) ** 2 + (py - ky[..., None, None]) ** 2  # (B, J, H, W)
        maps.extend(torch.exp(-torch.nan_to_num(d2, nan=float("inf")) / (2 * sigma ** 2)).unbind(1))
    return torch.stack(maps, 1)


def hand_box(kp: Tensor, margin: float = 0.25, min_side: float = 0.25) -> Tensor:
    """Square crop boxes ``(B, 3)`` = ``(cx, cy, side)`` around the visible keypoints.

    ``side = max(width, height) * (1 + 2 margin)``, at least ``min_side``; the box may leave the
    frame (crops are padded by replicating the border, the plain background).
    """
    xy = kp[..., :2].float()
    big = torch.tensor(float("inf"), device=xy.device)
    vis = torch.isfinite(xy)
    lo = torch.where(vis, xy, big).amin(1)
    hi = torch.where(vis, xy, -big).amax(1)
    center = (lo + hi) / 2
    side = ((hi - lo).amax(-1) * (1 + 2 * margin)).clamp(min=min_side)
    return torch.cat([center, side[:, None]], -1)


def to_crop_coords(kp: Tensor, box: Tensor) -> Tensor:
    """Normalised frame keypoints -> normalised crop coordinates."""
    return (kp[..., :2] - box[:, None, :2]) / box[:, None, 2:3] + 0.5


def from_crop_coords(kp: Tensor, box: Tensor) -> Tensor:
    """Inverse of :func:`to_crop_coords`."""
    return (kp[..., :2] - 0.5) * box[:, None, 2:3] + box[:, None, :2]


def crop(images: Tensor, box: Tensor, size: int, padding_mode: str = "border") -> Tensor:
    """Square crops ``(B, C, size, size)`` of ``images`` ``(B, C, H, W)`` at ``box`` (bilinear)."""
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = box[:, 2]
    theta[:, 1, 1] = box[:, 2]
    theta[:, 0, 2] = 2 * box[:, 0] - 1
    theta[:, 1, 2] = 2 * box[:, 1] - 1
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def uncrop(crops: Tensor, box: Tensor, size: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Place crops back into frames of ``size``: returns ``(frames, coverage)``.

    ``frames`` ``(B, C, H, W)`` holds the resampled crop (0 outside it); ``coverage`` ``(B, 1, H, W)``
    in [0, 1] is the fraction of each frame pixel the crop covers.
    """
    h, w = (size, size) if isinstance(size, int) else size
    b = crops.shape[0]
    side = box[:, 2]
    theta = torch.zeros(b, 2, 3, device=crops.device, dtype=torch.float32)
    theta[:, 0, 0] = 1 / side
    theta[:, 1, 1] = 1 / side
    theta[:, 0, 2] = (1 - 2 * box[:, 0]) / side
    theta[:, 1, 2] = (1 - 2 * box[:, 1]) / side
    grid = F.affine_grid(theta, [b, crops.shape[1], h, w], align_corners=False)
    frames = F.grid_sample(crops.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ones = torch.ones_like(crops[:, :1], dtype=torch.float32)
    coverage = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return frames, coverage
