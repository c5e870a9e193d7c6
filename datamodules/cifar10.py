"""CIFAR-10 from the standard python pickle batches on local disk (downloaded by the user)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import ArrayDataModule, DataError, images_to_model_space

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def read_cifar10(root: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 batches missing under {root}: {', '.join(missing)}. Download {URL}, extract it, and set "
            f"data.root to the 'cifar-10-batches-py' folder (expected files: {', '.join(TRAIN_FILES + TEST_FILES)}).")
    xs, ys = [], []
    for f in files:
        with open(root / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class CIFAR10DataModule(ArrayDataModule):
    """Train on the five training batches, validate on ``test_batch`` (as the DDPM paper reports)."""

    num_classes = 10

    def __init__(self, root: str, random_flip: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.root, self.random_flip = Path(root), random_flip

    def load(self) -> tuple[Tensor, Tensor]:
        x, y = read_cifar10(self.root, TRAIN_FILES)
        return images_to_model_space(x), torch.from_numpy(y)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from .base import TensorDictDataset

        x, y = self.load()
        xv, yv = read_cifar10(self.root, TEST_FILES)
        self.data_shape = tuple(x.shape[1:])
        keep_y = self.conditional
        self.train_set = TensorDictDataset(x=x, y=y if keep_y else None)
        self.val_set = TensorDictDataset(x=images_to_model_space(xv), y=torch.from_numpy(yv) if keep_y else None)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.random_flip and self.trainer is not None and self.trainer.training:
            flip = torch.rand(batch["x"].shape[0], device=batch["x"].device) < 0.5
            batch["x"] = torch.where(flip[:, None, None, None], batch["x"].flip(-1), batch["x"])
        return batch
