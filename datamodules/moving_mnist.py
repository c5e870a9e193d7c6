"""Moving MNIST (Srivastava et al. 2015), generated deterministically from the MNIST-5k digits.

Each clip shows ``num_digits`` digits bouncing inside a ``image_size`` square canvas: a digit
(resized to ``digit_size``) starts at a random position with a random direction and moves
``speed`` pixels per frame, reflecting off the walls. Digits overlap by pixel-wise maximum.
Train and validation clips use disjoint digit images (a stratified split of MNIST-5k) and
different seeds (``seed`` and ``seed + 1``), so the same config always gives the same clips.

Items: ``x`` float ``(T, 1, S, S)`` in [-1, 1]; ``y`` the digit class (one digit) or
``10 * first + second`` (two digits, 100 classes) when ``conditional``.
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor

from .base import DataError, SplitLoadersMixin, TensorDictDataset, check_batch_size, stratified_split
from .mnist import load_mnist5k


def bounce_trajectories(rng: np.random.Generator, num: int, frames: int, num_digits: int, box: float,
                        speed: float) -> np.ndarray:
    """Top-left positions ``(num, num_digits, frames, 2)`` (row, col) in ``[0, box]``, moving
    ``speed`` pixels per frame in a random direction and reflecting at the walls."""
    pos = rng.uniform(0, box, size=(num, num_digits, 2))
    angle = rng.uniform(0, 2 * np.pi, size=(num, num_digits))
    vel = speed * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    out = np.empty((num, num_digits, frames, 2))
    for f in range(frames):
        out[:, :, f] = pos
        pos = pos + vel
        for _ in range(4):  # reflect (more than once only if speed > box)
            low, high = pos < 0, pos > box
            pos = np.where(low, -pos, np.where(high, 2 * box - pos, pos))
            vel = np.where(low | high, -vel, vel)
        pos = np.clip(pos, 0, box)
    return out


def render_clips(digits: np.ndarray, traj: np.ndarray, image_size: int) -> np.ndarray:
    """Paste ``digits`` ``(num, num_digits, d, d)`` uint8 at rounded positions -> ``(num, T, S, S)`` uint8."""
    num, nd, frames, _ = traj.shape
    d = digits.shape[-1]
    canvas = np.zeros((num, frames, image_size, image_size), np.uint8)
    idx = np.rint(traj).astype(int)
    for i in range(num):
        for k in range(nd):
            for f in range(frames):
                r, c = idx[i, k, f]
                view = canvas[i, f, r:r + d, c:c + d]
                np.maximum(view, digits[i, k], out=view)
    return canvas


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def make_moving_mnist(images: np.ndarray, labels: np.ndarray, num_videos: int, frames: int = 8, image_size: int = 32,
                      digit_size: int = 16, num_digits: int = 1, speed: float = 2.0, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips ``(num_videos, T, S, S)`` uint8, their labels, and the trajectories used."""
    if digit_size > image_size:
        raise DataError(f"digit_size={digit_size} is larger than image_size={image_size}")
    if num_digits not in (1, 2):
        raise DataError(f"num_digits must be 1 or 2, got {num_digits}")
    if speed < 0 or frames < 1 or num_videos < 1:
        raise DataError(f"need speed >= 0, frames >= 1, num_videos >= 1; got {speed}, {frames}, {num_videos}")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(images), size=(num_videos, num_digits))
    digits = resize_digits(images, digit_size)[pick]
    traj = bounce_trajectories(rng, num_videos, frames, num_digits, float(image_size - digit_size), speed)
    clips = render_clips(digits, traj, image_size)
    lab = labels[pick]
    y = lab[:, 0] if num_digits == 1 else lab[:, 0] * 10 + lab[:, 1]
    return clips, y.astype(np.int64), traj


class MovingMNISTDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Bouncing MNIST digits generated in memory (a few MB at the default size).

    Args:
        num_train, num_val: clips per split.
        frames, image_size, digit_size, num_digits, speed: the clips (speed in pixels per frame).
        seed: train seed; validation uses ``seed + 1`` and digit images disjoint from training.
        conditional: yield ``y`` (digit class, or ``10 * a + b`` for two digits).
    """

    def __init__(self, num_train: int = 2000, num_val: int = 200, frames: int = 8, image_size: int = 32,
                 digit_size: int = 16, num_digits: int = 1, speed: float = 2.0, seed: int = 0,
                 batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False, conditional: bool = False,
                 path: str | None = None) -> None:
        super().__init__()
        self.num_train, self.num_val, self.frames, self.image_size = num_train, num_val, frames, image_size
        self.digit_size, self.num_digits, self.speed, self.seed = digit_size, num_digits, speed, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.conditional, self.path = conditional, path
        self.num_classes = 10 ** num_digits
        self.data_shape = (frames, 1, image_size, image_size)
        self.train_set: TensorDictDataset | None = None
        self.val_set: TensorDictDataset | None = None

    def make_split(self, split: str) -> tuple[Tensor, Tensor]:
        """Clips of one split in model space ``(N, T, 1, S, S)`` in [-1, 1] and labels."""
        images, labels = load_mnist5k(self.path)
        tr, va = stratified_split(labels, len(images), 0.2, 0)
        idx, n, seed = (tr, self.num_train, self.seed) if split == "train" else (va, self.num_val, self.seed + 1)
        clips, y, _ = make_moving_mnist(images[idx], labels[idx], n, self.frames, self.image_size, self.digit_size,
                                        self.num_digits, self.speed, seed)
        x = torch.from_numpy(clips).float().div_(127.5).sub_(1.0)[:, :, None]
        return x, torch.from_numpy(y)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        check_batch_size(self.batch_size, self.num_train, "clips, data.num_train")
        sets, self._labels = [], {}
        for split in ("train", "val"):
            x, y = self.make_split(split)
            sets.append(TensorDictDataset(x=x, y=y if self.conditional else None))
            self._labels[split] = y
        self.train_set, self.val_set = sets

    def real_samples(self, num: int, split: str = "val") -> Tensor:
        """Up to ``num`` real clips ``(N, T, 1, S, S)`` of a split, in a fixed order."""
        self.setup()
        ds = self.val_set if split == "val" else self.train_set
        return ds.fields["x"][: min(num, len(ds))].clone()

    def real_labels(self, num: int, split: str = "val") -> Tensor:
        """The digit labels of :meth:`real_samples` ``(num, split)``, in the same order (also when the
        clips are not ``conditional``)."""
        self.setup()
        return self._labels["val" if split == "val" else "train"][:num].clone()
