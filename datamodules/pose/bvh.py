"""A small BVH (Biovision Hierarchy) reader with forward kinematics in torch (numpy in, numpy out).

A BVH file has a HIERARCHY (joints with an ``OFFSET`` from their parent and a list of
``CHANNELS``) and a MOTION block (one row of channel values per frame). Conventions used here,
which are the ones of the format and of the CMU conversions:

- Joints are listed parent-before-child; ``End Site`` entries become joints named
  ``<parent>_end`` with no channels (they carry the last bone's length, e.g. the top of the head).
- Rotation channels are Euler angles in degrees, applied in the order listed: ``Zrotation
  Yrotation Xrotation`` means ``R_local = Rz(z) @ Ry(y) @ Rx(x)`` acting on column vectors.
- Position channels give a translation added to the joint's offset (for the root, whose offset
  is normally 0, they are its position).
- Forward kinematics: ``R_j = R_parent(j) @ R_local_j`` and
  ``p_j = p_parent(j) + R_parent(j) @ (offset_j + translation_j)``.

Positions come out in the file's units (CMU: inches x 1/0.45 "CMU units"; multiply by 0.056444
for metres, see :mod:`datamodules.pose.skeleton`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..base import DataError

_ROT = {"Xrotation": "x", "Yrotation": "y", "Zrotation": "z"}
_POS = {"Xposition": 0, "Yposition": 1, "Zposition": 2}


@dataclass
class BVH:
    """A parsed BVH file: skeleton (names, parents, offsets, channels) and raw motion values."""

    names: list[str]
    parents: list[int]            # -1 for the root
    offsets: np.ndarray           # (J, 3) float64, file units
    channels: list[list[str]]     # per joint, e.g. ["Zrotation", "Yrotation", "Xrotation"]
    motion: np.ndarray            # (F, C) float64, all channels of a frame in file order
    frame_time: float
    channel_start: list[int] = field(default_factory=list)  # first column of each joint in ``motion``

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"joint {name!r} is not in this BVH skeleton; joints: {', '.join(self.names)}") from None


def parse_bvh(path: str | Path) -> BVH:
    """Read a BVH file. Raises :class:`DataError` naming the file and line on malformed input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"BVH file {path} does not exist")
    tokens_by_line = [ln.split() for ln in path.read_text().splitlines()]
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int] = []
    pending = -1  # joint whose "{" is expected next
    i = 0
    try:
        while i < len(tokens_by_line):
            tok = tokens_by_line[i]
            i += 1
            if not tok:
                continue
            head = tok[0]
            if head == "HIERARCHY":
                continue
            if head in ("ROOT", "JOINT", "End"):
                parent = stack[-1] if stack else -1
                name = tok[1] if head != "End" else f"{names[parent]}_end"
                names.append(name)
                parents.append(parent)
                offsets.append([0.0, 0.0, 0.0])
                channels.append([])
                pending = len(names) - 1
            elif head == "{":
                stack.append(pending)
            elif head == "}":
                stack.pop()
            elif head == "OFFSET":
                offsets[stack[-1]] = [float(v) for v in tok[1:4]]
            elif head == "CHANNELS":
                n = int(tok[1])
                chans = tok[2:2 + n]
                bad = [c for c in chans if c not in _ROT and c not in _POS]
                if len(chans) != n or bad:
                    raise DataError(f"{path}:{i}: bad CHANNELS line {' '.join(tok)}")
                channels[stack[-1]] = chans
            elif head == "MOTION":
                break
            else:
                raise DataError(f"{path}:{i}: unexpected token {head!r} in HIERARCHY")
        num_frames = int(tokens_by_line[i][1])
        frame_time = float(tokens_by_line[i + 1][2])
        rows = [r for r in tokens_by_line[i + 2:] if r]
        motion = np.asarray(rows, dtype=np.float64)
    except (IndexError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} is not a valid BVH file near line {i + 1}: {e}") from e
    num_channels = sum(len(c) for c in channels)
    if motion.ndim != 2 or motion.shape[1] != num_channels or motion.shape[0] != num_frames:
        raise DataError(f"{path}: MOTION block has shape {motion.shape}, expected ({num_frames}, {num_channels})")
    starts, c = [], 0
    for ch in channels:
        starts.append(c)
        c += len(ch)
    return BVH(names, parents, np.asarray(offsets, dtype=np.float64), channels, motion, frame_time, starts)


def axis_rotation(axis: str, angle: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` about ``x``/``y``/``z`` by ``angle`` radians (right-handed)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "x":
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == "y":
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    elif axis == "z":
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    else:
        raise ValueError(f"unknown axis {axis!r}")
    return torch.stack(rows, -1).reshape(*angle.shape, 3, 3)


def euler_to_matrix(angles_deg: Tensor, order: str) -> Tensor:
    """Euler angles ``(..., k)`` in degrees, applied in ``order`` (e.g. ``"zyx"``) -> ``(..., 3, 3)``.

    ``order="zyx"`` gives ``Rz @ Ry @ Rx`` (the BVH reading of ``Zrotation Yrotation Xrotation``).
    """
    rad = angles_deg * (math.pi / 180.0)
    out = torch.eye(3, dtype=rad.dtype, device=rad.device).expand(*rad.shape[:-1], 3, 3)
    for k, axis in enumerate(order):
        out = out @ axis_rotation(axis, rad[..., k])
    return out


def local_transforms(bvh: BVH, frames: np.ndarray | slice | None = None,
                     dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Per-frame local rotations ``(F, J, 3, 3)`` and translations ``(F, J, 3)`` (offset + position channels)."""
    motion = torch.as_tensor(bvh.motion[frames] if frames is not None else bvh.motion, dtype=dtype)
    f, j = motion.shape[0], len(bvh.names)
    rot = torch.eye(3, dtype=dtype).expand(f, j, 3, 3).clone()
    trans = torch.as_tensor(bvh.offsets, dtype=dtype).expand(f, j, 3).clone()
    for idx, chans in enumerate(bvh.channels):
        if not chans:
            continue
        cols = motion[:, bvh.channel_start[idx]: bvh.channel_start[idx] + len(chans)]
        rot_cols = [k for k, ch in enumerate(chans) if ch in _ROT]
        if rot_cols:
            order = "".join(_ROT[chans[k]] for k in rot_cols)
            rot[:, idx] = euler_to_matrix(cols[:, rot_cols], order)
        for k, ch in enumerate(chans):
            if ch in _POS:
                trans[:, idx, _POS[ch]] += cols[:, k]
    return rot, trans


def forward_kinematics(parents: list[int], local_rot: Tensor, local_trans: Tensor) -> Tensor:
    """Global joint positions ``(F, J, 3)`` from local rotations ``(F,J,3,3)`` and translations ``(F,J,3)``.

    ``parents`` must list every parent before its children (BVH order does).
    """
    f, j = local_trans.shape[:2]
    g_rot: list[Tensor] = [None] * j  # type: ignore[list-item]
    g_pos: list[Tensor] = [None] * j  # type: ignore[list-item]
    for idx, p in enumerate(parents):
        if p < 0:
            g_pos[idx] = local_trans[:, idx]
            g_rot[idx] = local_rot[:, idx]
        else:
            if p >= idx:
                raise ValueError("parents must come before their children")
            g_pos[idx] = g_pos[p] + (g_rot[p] @ local_trans[:, idx, :, None])[..., 0]
            g_rot[idx] = g_rot[p] @ local_rot[:, idx]
    return torch.stack(g_pos, 1)


def bvh_positions(bvh: BVH, frames: np.ndarray | slice | None = None) -> np.ndarray:
    """Global positions ``(F, J, 3)`` (file units, file axes) of every joint, end sites included."""
    rot, trans = local_transforms(bvh, frames)
    return forward_kinematics(bvh.parents, rot, trans).numpy()
