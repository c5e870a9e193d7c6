"""``PoseDataModule``: root-relative 3-D poses (H36M-17, metres, y down) from CMU BVH or Human3.6M.

Training batches are ``{"x": (B, 17, 3)}`` for a pose prior; on the device they are augmented
(every batch, training only) by a random rotation about the vertical axis, an optional random
tilt about the x axis (so the prior also knows poses seen by cameras looking up or down) and a
mirror (left/right swap + x flip) with probability 1/2. Validation uses the last ``val_fraction``
of every training clip (contiguous, so neighbouring frames do not leak); the test clips are never
seen in training. :meth:`evaluation_batch` shows the test poses to seeded random cameras and
returns ``{"x": camera-frame truth, "cond": {"keypoints_2d", "confidence", "K"}, ...}``.

120 fps mocap is highly redundant: ``stride`` keeps every n-th frame.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..base import DataError, TensorDictDataset, check_batch_size
from .bvh import bvh_positions, parse_bvh
from .camera import RandomCameras, observe
from .h36m import h36m_file, load_h36m_poses
from .skeleton import CMU_UNIT_TO_METRE, NUM_JOINTS, cmu_to_h36m, mirror, rotate_vertical

SOURCES = ("cmu", "h36m")


def load_cmu_clip(path: str | Path, stride: int = 1, unit_scale: float = CMU_UNIT_TO_METRE) -> np.ndarray:
    """H36M-17 poses ``(F/stride, 17, 3)`` (metres, y down, root-relative) of one CMU BVH clip."""
    bvh = parse_bvh(path)
    frames = np.arange(0, bvh.num_frames, stride)
    return cmu_to_h36m(bvh_positions(bvh, frames), bvh.names, unit_scale)


def augment_poses(x: Tensor, rotate: bool = True, mirror_prob: float = 0.5, tilt_deg: float = 0.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Random vertical-axis rotation, tilt about x (uniform in +-tilt_deg) and mirroring of ``(B, J, 3)`` poses."""
    b = x.shape[0]

    def rand(n: int) -> Tensor:
        return torch.rand(n, generator=generator, device=x.device)

    if rotate:
        x = rotate_vertical(x, rand(b).to(x.dtype) * 2 * math.pi)
    if tilt_deg > 0:
        a = (rand(b).to(x.dtype) * 2 - 1) * tilt_deg * math.pi / 180
        c, s = torch.cos(a)[:, None], torch.sin(a)[:, None]
        y, z = x[..., 1], x[..., 2]
        x = torch.stack([x[..., 0], c * y - s * z, s * y + c * z], -1)
    if mirror_prob > 0:
        flip = rand(b) < mirror_prob
        x = torch.where(flip[:, None, None], mirror(x), x)
    return x


class PoseDataModule(pl.LightningDataModule):
    """Root-relative H36M-17 poses for a diffusion pose prior and for zero-shot 2D->3D evaluation.

    Args:
        source: ``cmu`` (BVH clips in ``data_dir/cmu_dir``) or ``h36m`` (``data_dir/h36m_file``).
        train_clips / test_clips: CMU clip names (e.g. ``131_01``) or H36M subjects (``S1``, ``S9``).
        stride: keep every ``stride``-th frame (training and validation).
        eval_stride: keep every ``eval_stride``-th test frame for :meth:`evaluation_batch`.
        augment: dict with ``rotate`` (bool), ``mirror_prob`` and ``tilt_deg``.
        cameras: keyword arguments of :class:`RandomCameras` for evaluation views.
        noise_px / drop_prob: 2-D Gaussian noise (pixels) and joint drop-out of evaluation inputs.
        eval_seed: seed of the evaluation cameras and noise (the same seed gives the same inputs).
        epoch_repeats: an epoch passes over the (small) training set this many times.
    """

    def __init__(self, data_dir: str, source: str = "cmu", cmu_dir: str = "mocap/cmu",
                 h36m_file: str = "h36m/data_3d_h36m.npz", train_clips: Sequence[str] = ("131_01", "131_03"),
                 test_clips: Sequence[str] = ("131_02",), stride: int = 4, eval_stride: int = 10,
                 val_fraction: float = 0.1, batch_size: int = 256, num_workers: int = 0,
                 augment: dict[str, Any] | None = None, cameras: dict[str, Any] | None = None,
                 noise_px: float = 0.0, drop_prob: float = 0.0, eval_seed: int = 0,
                 unit_scale: float = CMU_UNIT_TO_METRE, epoch_repeats: int = 1) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown pose source {source!r}; choose one of {', '.join(SOURCES)}")
        if stride < 1 or eval_stride < 1:
            raise ValueError("stride and eval_stride must be >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        train_clips, test_clips = [str(c) for c in train_clips], [str(c) for c in test_clips]
        overlap = set(train_clips) & set(test_clips)
        if overlap:
            raise DataError(f"clips {sorted(overlap)} are both training and test clips; held-out evaluation needs disjoint sets")
        self.data_dir, self.source, self.cmu_dir, self.h36m_file = Path(data_dir), source, cmu_dir, h36m_file
        self.train_clips, self.test_clips = list(train_clips), list(test_clips)
        self.stride, self.eval_stride, self.val_fraction = stride, eval_stride, val_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = {"rotate": True, "mirror_prob": 0.5, "tilt_deg": 0.0, **dict(augment or {})}
        self.cameras = RandomCameras(**dict(cameras or {}))
        self.noise_px, self.drop_prob, self.eval_seed, self.unit_scale = noise_px, drop_prob, eval_seed, unit_scale
        self.epoch_repeats = max(1, int(epoch_repeats))
        self.data_shape = (NUM_JOINTS, 3)
        self.train_poses: Tensor | None = None

    # ------------------------------------------------------------------ loading
    def _load(self, clips: Sequence[str], stride: int) -> dict[str, np.ndarray]:
        if self.source == "cmu":
            folder = self.data_dir / self.cmu_dir
            out = {}
            for clip in clips:
                path = folder / f"{clip}.bvh"
                if not path.is_file():
                    raise DataError(f"CMU mocap clip {path} not found: set paths.data_dir (KAKUSAN_DATA_DIR) to the folder "
                                    f"holding mocap/cmu/*.bvh (CMU Graphics Lab Motion Capture Database, mocap.cs.cmu.edu)")
                out[clip] = load_cmu_clip(path, stride, self.unit_scale)
            return out
        return load_h36m_poses(h36m_file(self.data_dir, self.h36m_file), clips, stride=stride)

    def setup(self, stage: str | None = None) -> None:
        if self.train_poses is not None:
            return
        train, val = [], []
        for name, poses in self._load(self.train_clips, self.stride).items():
            n_val = int(round(len(poses) * self.val_fraction))
            train.append(poses[: len(poses) - n_val])
            val.append(poses[len(poses) - n_val:])
        self.train_poses = torch.from_numpy(np.concatenate(train))
        self.val_poses = torch.from_numpy(np.concatenate(val))
        test = self._load(self.test_clips, self.eval_stride)
        self.test_poses = torch.from_numpy(np.concatenate(list(test.values())))
        check_batch_size(self.batch_size, len(self.train_poses), "poses", "; lower data.batch_size or data.stride")

    # ------------------------------------------------------------------ loaders
    def _loader(self, x: Tensor, shuffle: bool) -> DataLoader:
        return DataLoader(TensorDictDataset(x=x), batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # a small pose set is repeated so that an epoch is a useful number of steps
        return self._loader(self.train_poses.repeat(self.epoch_repeats, 1, 1), True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_poses if len(self.val_poses) else self.train_poses[:self.batch_size], False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_poses, False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            a = self.augment
            batch = {**batch, "x": augment_poses(batch["x"], a["rotate"], a["mirror_prob"], a["tilt_deg"])}
        return batch

    def real_samples(self, num: int, split: str = "val") -> Tensor:
        self.setup()
        x = {"val": self.val_poses, "train": self.train_poses, "test": self.test_poses}[split]
        return x[:num]

    # ------------------------------------------------------------------ zero-shot evaluation
    def evaluation_batch(self, num: int | None = None, seed: int | None = None) -> dict[str, Any]:
        """Test poses seen by seeded random cameras: ``x`` (camera-frame, root-relative truth) and ``cond``."""
        self.setup()
        poses = self.test_poses if num is None else self.test_poses[:num]
        gen = torch.Generator().manual_seed(self.eval_seed if seed is None else seed)
        cams = self.cameras.sample(len(poses), gen)
        obs = observe(poses, cams, self.noise_px, self.drop_prob, gen)
        cond = {k: obs[k] for k in ("keypoints_2d", "confidence", "K")}
        return {"x": obs["x"], "cond": cond, "poses_cam": obs["poses_cam"], "R": cams.R, "t": cams.t}
