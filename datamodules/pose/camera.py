"""Pinhole cameras (intrinsics K, extrinsics R, t) and a seeded random-camera generator.

A world point ``X`` maps to camera coordinates ``X_c = R X + t`` and to pixels
``u = (K X_c)[:2] / (K X_c)[2]``. Camera axes follow OpenCV: x right, y down, z forward, so the
world frame of :mod:`datamodules.pose.skeleton` (y down) is a camera with ``R = I``.
Every function is batched over a leading dimension and runs on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..base import DataError


def check_intrinsics(K: Tensor) -> None:
    """Raise :class:`DataError` for non-finite or singular intrinsics ``(..., 3, 3)``."""
    if K.shape[-2:] != (3, 3):
        raise DataError(f"camera intrinsics K must be (3, 3) per pose, got {tuple(K.shape)}")
    det = torch.linalg.det(K.double())
    if not torch.isfinite(K).all() or (det.abs() < 1e-9).any():
        raise DataError("camera intrinsics K are singular or not finite; expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                        "with fx, fy > 0 (in pixels)")


def project(points_cam: Tensor, K: Tensor, min_depth: float = 1e-6) -> Tensor:
    """Camera-frame points ``(B, J, 3)`` -> pixels ``(B, J, 2)`` with intrinsics ``(B, 3, 3)``."""
    h = points_cam @ K.transpose(-1, -2)
    return h[..., :2] / h[..., 2:].clamp(min=min_depth)


def back_project(pixels: Tensor, K: Tensor) -> Tensor:
    """Pixels ``(B, J, 2)`` -> unit ray directions ``(B, J, 3)`` in the camera frame (through the centre)."""
    check_intrinsics(K)
    ones = torch.ones_like(pixels[..., :1])
    rays = torch.cat([pixels, ones], -1) @ torch.linalg.inv(K.double()).to(pixels.dtype).transpose(-1, -2)
    return rays / rays.norm(dim=-1, keepdim=True)


def look_at(position: Tensor, target: Tensor, down: Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera rotations ``(B, 3, 3)`` for cameras at ``position`` looking at ``target`` (both (B, 3))."""
    z = target - position
    z = z / z.norm(dim=-1, keepdim=True)
    d = position.new_tensor(down).expand_as(z)
    x = torch.cross(d, z, dim=-1)  # right = down x forward
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-2)  # rows are the camera axes in world coordinates


@dataclass
class Cameras:
    """A batch of cameras: ``K`` (B,3,3), world-to-camera ``R`` (B,3,3) and ``t`` (B,3)."""

    K: Tensor
    R: Tensor
    t: Tensor

    def to_camera(self, points_world: Tensor) -> Tensor:
        return points_world @ self.R.transpose(-1, -2) + self.t[:, None]

    def project(self, points_world: Tensor) -> Tensor:
        return project(self.to_camera(points_world), self.K)


class RandomCameras:
    """Seeded random cameras around a subject at the origin of a y-down world.

    Each camera stands ``distance`` metres away horizontally at azimuth ``yaw`` (degrees; 0 = on
    the subject's -z side), ``height`` metres above the pelvis (negative = below), looks at the
    pelvis, then tilts by an extra ``pitch`` (degrees, + looks further down). Focal lengths (pixels)
    are drawn from ``focal``; the principal point is the centre of an ``image_size`` (w, h) image.
    """

    def __init__(self, distance: Sequence[float] = (3.0, 6.0), height: Sequence[float] = (-0.5, 1.5),
                 yaw: Sequence[float] = (-180.0, 180.0), pitch: Sequence[float] = (-5.0, 5.0),
                 focal: Sequence[float] = (800.0, 1500.0), image_size: Sequence[int] = (1000, 1000)) -> None:
        for name, rng in dict(distance=distance, height=height, yaw=yaw, pitch=pitch, focal=focal).items():
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"camera {name} range must be [low, high] with low <= high, got {list(rng)}")
        if min(distance) <= 0 or min(focal) <= 0:
            raise ValueError("camera distance and focal length must be positive")
        self.distance, self.height, self.yaw, self.pitch = distance, height, yaw, pitch
        self.focal, self.image_size = focal, image_size

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Cameras:
        def u(rng: Sequence[float]) -> Tensor:
            return torch.rand(n, generator=generator, dtype=torch.float64) * (rng[1] - rng[0]) + rng[0]

        dist, height, yaw, pitch, f = u(self.distance), u(self.height), u(self.yaw), u(self.pitch), u(self.focal)
        a = yaw * math.pi / 180
        pos = torch.stack([dist * torch.sin(a), -height, -dist * torch.cos(a)], -1)
        R = look_at(pos, torch.zeros_like(pos))
        p = pitch * math.pi / 180  # extra tilt about the camera's x axis
        c, s = torch.cos(p), torch.sin(p)
        one, zero = torch.ones_like(p), torch.zeros_like(p)
        tilt = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], -1).reshape(n, 3, 3)
        R = tilt @ R
        t = -(R @ pos[:, :, None])[..., 0]
        K = torch.zeros(n, 3, 3, dtype=torch.float64)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = self.image_size[0] / 2
        K[:, 1, 2] = self.image_size[1] / 2
        K[:, 2, 2] = 1.0
        return Cameras(K.to(dtype), R.to(dtype), t.to(dtype))


def observe(poses_world: Tensor, cams: Cameras, noise_px: float = 0.0, drop_prob: float = 0.0,
            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """2-D observations of world poses ``(B, J, 3)``: keypoints, confidences and camera-frame truth.

    Adds isotropic Gaussian pixel noise of std ``noise_px``; each joint is lost with probability
    ``drop_prob`` (keypoint NaN, confidence 0), never more than all but 3 joints of a pose.
    Returns ``keypoints_2d`` (B,J,2), ``confidence`` (B,J), ``K``, ``poses_cam`` (B,J,3, absolute)
    and ``x`` (B,J,3, root-relative camera-frame truth).
    """
    cam = cams.to_camera(poses_world)
    if (cam[..., 2] <= 0.05).any():
        raise DataError("a random camera sees part of a pose behind or on its image plane; increase the camera "
                        "distance range")
    kp = project(cam, cams.K)
    if noise_px > 0:
        kp = kp + noise_px * torch.randn(kp.shape, generator=generator, dtype=kp.dtype)
    conf = torch.ones(kp.shape[:2], dtype=kp.dtype)
    if drop_prob > 0:
        drop = torch.rand(conf.shape, generator=generator) < drop_prob
        drop &= ((~drop).sum(-1, keepdim=True) >= 3)  # a pose that would keep < 3 joints keeps all
        conf = torch.where(drop, torch.zeros_like(conf), conf)
        kp = torch.where(drop[..., None], torch.full_like(kp, float("nan")), kp)
    return {"keypoints_2d": kp, "confidence": conf, "K": cams.K, "poses_cam": cam, "x": cam - cam[:, :1]}
