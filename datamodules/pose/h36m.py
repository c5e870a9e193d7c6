"""Human3.6M-style archives and users' 2-D keypoint files.

**3-D poses** (``data_3d_h36m.npz``, the archive made by VideoPose3D's ``prepare_data_h36m.py``):
``positions_3d`` is a pickled dict ``{subject: {action: (N, 32, 3) float}}`` of world-frame joint
positions in metres (Z up). Get it by following
https://github.com/facebookresearch/VideoPose3D/blob/main/DATASET.md (Human3.6M licence needed:
http://vision.imar.ro/human3.6m) and put it at ``${paths.data_dir}/h36m/data_3d_h36m.npz``.

**2-D keypoints + intrinsics** (one ``.npz`` or ``.json`` file, for running ZeDO on your own
detections); keys:

- ``keypoints_2d``: (N, 17, 2) pixel coordinates in the H36M-17 order of
  :mod:`datamodules.pose.skeleton`; NaN marks a missing joint.
- ``confidence`` (optional): (N, 17) in [0, 1]; missing means 1. NaN joints get confidence 0.
- ``K``: (3, 3) or (N, 3, 3) camera intrinsics (pixels); must be invertible.
- ``poses_3d`` (optional): (N, 17, 3) camera-frame ground truth in metres for evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..base import DataError
from .skeleton import H36M32_TO_17, NUM_JOINTS, zup_to_camera_convention

H36M_URL = "https://github.com/facebookresearch/VideoPose3D/blob/main/DATASET.md"


def h36m_file(data_dir: str | Path, filename: str = "h36m/data_3d_h36m.npz") -> Path:
    path = Path(data_dir) / filename
    if not path.is_file():
        raise DataError(
            f"Human3.6M 3-D poses not found: {path} does not exist. This experiment needs the "
            f"preprocessed archive data_3d_h36m.npz (positions_3d[subject][action], 32 joints, metres), "
            f"which you must make yourself: register at http://vision.imar.ro/human3.6m, then follow "
            f"{H36M_URL} (prepare_data_h36m.py) and put the file at {path} (or set data.h36m_file).")
    return path


def load_h36m_poses(path: str | Path, subjects: Sequence[str], actions: Sequence[str] | None = None,
                    stride: int = 1) -> dict[str, np.ndarray]:
    """``{"S9/Walking": (N, 17, 3)}`` root-relative metres in the y-down convention, every ``stride``-th frame."""
    try:
        archive = np.load(path, allow_pickle=True)
        positions = archive["positions_3d"].item()
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path} is not a VideoPose3D-style data_3d_h36m.npz with a 'positions_3d' dict ({e})") from e
    out: dict[str, np.ndarray] = {}
    for subject in subjects:
        if subject not in positions:
            raise DataError(f"subject {subject!r} is not in {path}; it has {', '.join(sorted(positions))}")
        for action, arr in positions[subject].items():
            if actions is not None and action.split(" ")[0] not in actions and action not in actions:
                continue
            arr = np.asarray(arr, dtype=np.float64)
            if arr.ndim != 3 or arr.shape[1:] not in ((32, 3), (17, 3)):
                raise DataError(f"{path}: {subject}/{action} has shape {arr.shape}, expected (N, 32, 3)")
            if arr.shape[1] == 32:
                arr = arr[:, list(H36M32_TO_17)]
            arr = zup_to_camera_convention(arr[::stride])
            out[f"{subject}/{action}"] = (arr - arr[:, :1]).astype(np.float32)
    if not out:
        raise DataError(f"no H36M clips selected from {path} (subjects {list(subjects)}, actions {actions})")
    return out


def _read_any(path: Path) -> dict[str, Any]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.suffix == ".json":
        return {k: np.asarray(v, dtype=np.float64) for k, v in json.loads(path.read_text()).items()}
    raise DataError(f"{path}: keypoint files must be .npz or .json")


def validate_keypoints(keypoints_2d: np.ndarray, confidence: np.ndarray | None, K: np.ndarray,
                       source: str = "input") -> dict[str, np.ndarray]:
    """Check shapes and values; NaN joints get confidence 0. Returns float32 arrays with K as (N,3,3)."""
    kp = np.asarray(keypoints_2d, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_JOINTS, 2):
        raise DataError(f"{source}: keypoints_2d must have shape (N, {NUM_JOINTS}, 2) in the H36M-17 order, "
                        f"got {kp.shape}; map your detector's joints to H36M-17 first")
    n = kp.shape[0]
    conf = np.ones((n, NUM_JOINTS)) if confidence is None else np.asarray(confidence, dtype=np.float64)
    if conf.shape != (n, NUM_JOINTS):
        raise DataError(f"{source}: confidence must have shape ({n}, {NUM_JOINTS}), got {conf.shape}")
    conf = np.nan_to_num(conf, nan=0.0)
    if (conf < 0).any():
        raise DataError(f"{source}: confidence must be >= 0")
    missing = ~np.isfinite(kp).all(-1)
    conf = np.where(missing, 0.0, np.minimum(conf, 1.0))
    kp = np.where(missing[..., None], 0.0, kp)
    dead = (conf <= 0).all(-1)
    if dead.any():
        raise DataError(f"{source}: {int(dead.sum())} pose(s) (first: index {int(np.flatnonzero(dead)[0])}) have no "
                        f"usable joint (all confidences 0 or all keypoints NaN); drop them before running")
    if (conf > 0).sum(-1).min() < 3:
        raise DataError(f"{source}: every pose needs at least 3 joints with confidence > 0 to place it in 3-D")
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3))
    if K.shape != (n, 3, 3):
        raise DataError(f"{source}: K must be (3, 3) or ({n}, 3, 3), got {K.shape}")
    if not np.isfinite(K).all() or (np.abs(np.linalg.det(K)) < 1e-9).any() or (np.abs(K[:, 2] - [0, 0, 1]) > 1e-6).any():
        raise DataError(f"{source}: K must be a finite, invertible intrinsics matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]]")
    return {"keypoints_2d": kp.astype(np.float32), "confidence": conf.astype(np.float32), "K": K.astype(np.float32)}


def load_keypoints_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a 2-D keypoints file (format in the module docstring), validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"2-D keypoint file {path} does not exist (expected .npz/.json with keypoints_2d (N,17,2), "
                        f"optional confidence (N,17), K (3,3); see datamodules/pose/h36m.py)")
    raw = _read_any(path)
    for key in ("keypoints_2d", "K"):
        if key not in raw:
            raise DataError(f"{path} has no {key!r}; found {', '.join(raw)}")
    out = validate_keypoints(raw["keypoints_2d"], raw.get("confidence"), raw["K"], str(path))
    if "poses_3d" in raw:
        gt = np.asarray(raw["poses_3d"], dtype=np.float32)
        if gt.shape != (out["keypoints_2d"].shape[0], NUM_JOINTS, 3):
            raise DataError(f"{path}: poses_3d must have shape (N, 17, 3), got {gt.shape}")
        out["poses_3d"] = gt
    return out
