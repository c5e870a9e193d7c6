"""The 17-joint Human3.6M layout, its bones and left/right pairs, and the CMU -> H36M mapping.

Coordinate convention for every 3-D pose in kakusan's pose code (the "camera convention", as
OpenCV): **x right, y down, z forward, metres, root-relative** (joint 0, the pelvis, at the
origin). The vertical axis is -y. World-frame mocap (Y up) is turned into this frame by a proper
rotation of 180 degrees about x, ``(x, y, z) -> (x, -y, -z)`` (never a reflection, which would
swap left and right).

H36M-17 joints (the order used by VideoPose3D, GFPose and ZeDO)::

    0 hip (pelvis)  1 r_hip  2 r_knee  3 r_ankle  4 l_hip  5 l_knee  6 l_ankle
    7 spine  8 thorax  9 neck/nose  10 head  11 l_shoulder  12 l_elbow  13 l_wrist
    14 r_shoulder  15 r_elbow  16 r_wrist

How each is derived from the CMU BVH skeleton (names as in the CMU "3dsMax-friendly" BVH files;
"X" is the global position of joint X from forward kinematics, ``X_end`` its end site):

=============  ===========================================================================
H36M joint     CMU source
=============  ===========================================================================
0 hip          midpoint of LeftHip and RightHip (H36M's pelvis sits between the hip joints;
               CMU's root ``Hips`` is ~9 cm higher, at the top of the hip-joint segments)
1-3 right leg  RightHip, RightKnee, RightAnkle
4-6 left leg   LeftHip, LeftKnee, LeftAnkle
7 spine        Chest (the joint at the top of CMU's ``lowerback`` segment, mid-torso)
8 thorax       midpoint of LeftShoulder and RightShoulder (H36M's thorax lies on the shoulder line)
9 neck/nose    midpoint of Head and Head_end (Head = base of the skull, Head_end = top of the
               head; H36M's joint 9 sits at about nose height)
10 head        Head_end (top of the head)
11-13 left     LeftShoulder, LeftElbow, LeftWrist
14-16 right    RightShoulder, RightElbow, RightWrist
=============  ===========================================================================
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..base import DataError

CMU_UNIT_TO_METRE = 0.056444  # CMU units are inches / 0.45

H36M_JOINTS = ("hip", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
               "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist")
NUM_JOINTS = len(H36M_JOINTS)
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
BONES = tuple((p, c) for c, p in enumerate(H36M_PARENTS) if p >= 0)
LEFT = (4, 5, 6, 11, 12, 13)
RIGHT = (1, 2, 3, 14, 15, 16)
# index permutation that swaps left and right joints (for mirroring)
FLIP_PERM = tuple(RIGHT[LEFT.index(i)] if i in LEFT else LEFT[RIGHT.index(i)] if i in RIGHT else i
                  for i in range(NUM_JOINTS))
# pairs of symmetric bones (left, right), handy for plausibility checks
SYMMETRIC_BONES = tuple(((H36M_PARENTS[l], l), (H36M_PARENTS[r], r)) for l, r in zip(LEFT, RIGHT))

# CMU joint name(s) and weights for each H36M joint (a weighted sum of global positions).
CMU_TO_H36M: tuple[tuple[tuple[str, float], ...], ...] = (
    (("LeftHip", 0.5), ("RightHip", 0.5)),
    (("RightHip", 1.0),), (("RightKnee", 1.0),), (("RightAnkle", 1.0),),
    (("LeftHip", 1.0),), (("LeftKnee", 1.0),), (("LeftAnkle", 1.0),),
    (("Chest", 1.0),),
    (("LeftShoulder", 0.5), ("RightShoulder", 0.5)),
    (("Head", 0.5), ("Head_end", 0.5)),
    (("Head_end", 1.0),),
    (("LeftShoulder", 1.0),), (("LeftElbow", 1.0),), (("LeftWrist", 1.0),),
    (("RightShoulder", 1.0),), (("RightElbow", 1.0),), (("RightWrist", 1.0),),
)

# Human3.6M's 32-joint skeleton (data_3d_h36m.npz) -> the 17 joints above (VideoPose3D's choice).
H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)


def cmu_mapping_matrix(names: list[str]) -> np.ndarray:
    """``(17, J)`` matrix W with ``h36m = W @ cmu_positions`` for a CMU skeleton with joint ``names``."""
    w = np.zeros((NUM_JOINTS, len(names)))
    for k, sources in enumerate(CMU_TO_H36M):
        for name, weight in sources:
            if name not in names:
                raise DataError(f"the BVH skeleton has no joint {name!r} needed for H36M joint "
                                f"{H36M_JOINTS[k]!r}; is this a CMU (3dsMax-friendly) BVH file? joints: {', '.join(names)}")
            w[k, names.index(name)] += weight
    return w


def yup_to_camera_convention(x: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """World Y-up coordinates -> x right, y down, z forward: 180 degree rotation about x."""
    return x * (x.new_tensor([1.0, -1.0, -1.0]) if isinstance(x, Tensor) else np.array([1.0, -1.0, -1.0]))


def zup_to_camera_convention(x: np.ndarray) -> np.ndarray:
    """World Z-up coordinates (Human3.6M world frame) -> y down: ``(x, y, z) -> (x, -z, y)`` (a rotation)."""
    return np.stack([x[..., 0], -x[..., 2], x[..., 1]], axis=-1)


def cmu_to_h36m(positions: np.ndarray, names: list[str], unit_scale: float = CMU_UNIT_TO_METRE,
                root_relative: bool = True) -> np.ndarray:
    """CMU global positions ``(F, J, 3)`` (file units, Y up) -> H36M-17 ``(F, 17, 3)`` in metres, y down."""
    w = cmu_mapping_matrix(names)
    out = np.einsum("kj,fjc->fkc", w, positions) * unit_scale
    out = yup_to_camera_convention(out)
    if root_relative:
        out = out - out[:, :1]
    return out.astype(np.float32)


def bone_lengths(poses: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Lengths ``(..., 16)`` of the bones of ``(..., 17, 3)`` poses, in the order of :data:`BONES`."""
    p = [b[0] for b in BONES]
    c = [b[1] for b in BONES]
    d = poses[..., c, :] - poses[..., p, :]
    return torch.linalg.norm(d, dim=-1) if isinstance(d, Tensor) else np.linalg.norm(d, axis=-1)


def mirror(poses: Tensor) -> Tensor:
    """Mirror ``(..., 17, 3)`` poses: flip x and swap left/right joints (a plausible pose again)."""
    return poses[..., list(FLIP_PERM), :] * poses.new_tensor([-1.0, 1.0, 1.0])


def rotate_vertical(poses: Tensor, angle: Tensor) -> Tensor:
    """Rotate ``(B, J, 3)`` poses by ``angle`` (B,) radians about the vertical (y) axis."""
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    x, y, z = poses.unbind(-1)
    return torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)


def facing_angle(poses: Tensor) -> Tensor:
    """Yaw (radians, about y) of the direction the body faces: the horizontal normal of the hip line.

    Rotating a pose by ``-facing_angle(pose)`` with :func:`rotate_vertical` makes it face +z.
    """
    across = poses[..., 4, :] - poses[..., 1, :]      # right hip -> left hip
    # forward = across x up with up = (0,-1,0) (y down): (ax, ay, az) x (0,-1,0) = (az, 0, -ax)
    fx, fz = across[..., 2], -across[..., 0]
    return torch.atan2(fx, fz)
