"""Shared pieces: a dataset over in-memory arrays and a datamodule with a stratified split."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .resumable import ResumableDataLoader


class DataError(ValueError):
    """A problem with the user's data: the message says what and where."""


def check_batch_size(batch_size: int, available: int, what: str = "items in the training split",
                     hint: str = "") -> None:
    """``data.batch_size`` must be a whole number in ``[1, available]``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"data.batch_size must be a whole number >= 1, got {batch_size!r}")
    if batch_size > available:
        raise DataError(f"batch_size={batch_size} is larger than the training split ({available} {what}){hint}")


def images_to_model_space(images: np.ndarray, image_size: int | None = None, resize: str = "pad") -> Tensor:
    """uint8 images ``(N,H,W)`` or ``(N,H,W,C)`` -> float ``(N,C,S,S)`` in [-1, 1].

    ``resize='pad'`` pads with the background value (-1) to ``image_size`` (MNIST 28 -> 32 keeps
    strokes untouched); ``'resize'`` resamples bilinearly with antialiasing.
    """
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    x = torch.from_numpy(np.array(images, copy=True))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.float() / 127.5 - 1.0
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        return x.contiguous()
    h, w = x.shape[-2:]
    if resize == "pad":
        if h > image_size or w > image_size:
            raise DataError(f"cannot pad {h}x{w} images to {image_size}x{image_size}; use resize='resize'")
        top, left = (image_size - h) // 2, (image_size - w) // 2
        return F.pad(x, (left, image_size - w - left, top, image_size - h - top), value=-1.0).contiguous()
    if resize == "resize":
        return F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    raise ValueError(f"unknown resize mode {resize!r}; choose pad or resize")


def stratified_split(labels: np.ndarray | None, n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train/val indices; with labels, each class keeps its share in both parts."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        n_val = int(round(n * val_fraction))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class TensorDictDataset(Dataset):
    """Items ``{"x": x[i], "y": y[i], ...}`` from aligned tensors or lists."""

    def __init__(self, **fields: Any) -> None:
        lengths = {k: len(v) for k, v in fields.items() if v is not None}
        if len(set(lengths.values())) != 1:
            raise DataError(f"fields have different lengths: {lengths}")
        self.fields = {k: v for k, v in fields.items() if v is not None}
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.fields.items()}


@torch.no_grad()
def map_train_inputs(dm: Any, fn: Callable[[Tensor], Tensor], batch_size: int, item_shape: tuple[int, ...],
                     desc: str = "caching latents") -> bool:
    """Replace the ``x`` field of ``dm.train_set`` (an in-memory :class:`TensorDictDataset`) by ``fn``
    applied to batches of ``batch_size`` items: e.g. latents encoded once instead of at every step.
    Only a set whose items have ``item_shape`` is mapped; for any other (not in memory, or mapped
    already) nothing changes and the result is False."""
    from tqdm.auto import tqdm

    fields = dict(getattr(getattr(dm, "train_set", None), "fields", {}))
    x = fields.get("x")
    if x is None or tuple(x.shape[1:]) != tuple(item_shape):
        return False
    fields["x"] = torch.cat([fn(x[i:i + batch_size]).cpu()
                             for i in tqdm(range(0, len(x), batch_size), desc=desc, leave=False)])
    dm.train_set = TensorDictDataset(**fields)
    return True


class SplitLoadersMixin:
    """Train/val/test loaders for datamodules that hold ``train_set`` and ``val_set``.

    The training loader is resumable mid-epoch and shuffled by (run seed, epoch); evaluation
    loaders have their own generator. Expects ``batch_size``, ``num_workers``, ``pin_memory``
    (and optionally ``drop_last``) attributes and a ``setup()`` that builds the two sets.
    """

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0)
        if shuffle:
            # Shuffled by (run seed, epoch) and resumable mid-epoch: see datamodules/resumable.py.
            # the run's seed (seed_everything sets torch.initial_seed) drives the shuffle order
            loader = ResumableDataLoader(ds, batch_size=self.batch_size, seed=torch.initial_seed() % 2**31,
                                         drop_last=getattr(self, "drop_last", True), **common)
            loader.trainer = self.trainer
            return loader
        # its own generator: creating evaluation iterators never consumes the global (training) RNG
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=False,
                          generator=torch.Generator().manual_seed(0), **common)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ArrayDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Datamodule over arrays held in memory, split once with a fixed seed.

    Subclasses implement :meth:`load` returning ``(x, y)`` with ``x`` already in model space.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.1, split_seed: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, drop_last: bool = True,
                 conditional: bool = True) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.split_seed = batch_size, val_fraction, split_seed
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.conditional = conditional
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def load(self) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self.load()
        self.data_shape = tuple(x.shape[1:])
        labels = y.numpy() if y is not None else None
        tr, va = stratified_split(labels, len(x), self.val_fraction, self.split_seed)
        check_batch_size(self.batch_size, len(tr))
        yy = y if (y is not None and self.conditional) else None
        self.train_set = TensorDictDataset(x=x[tr], y=None if yy is None else yy[tr])
        self.val_set = TensorDictDataset(x=x[va], y=None if yy is None else yy[va])

    def real_samples(self, num: int, split: str = "val", seed: int = 0) -> Tensor:
        """Up to ``num`` real items of a split in model space (for metrics and figures): a seeded random
        subset, since splits are stored sorted (by class) and their first items are not representative."""
        self.setup()
        ds = self.val_set if split == "val" else self.train_set
        n = min(num, len(ds))
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return torch.stack([ds[i]["x"] for i in idx])
