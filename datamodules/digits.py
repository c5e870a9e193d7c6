"""scikit-learn's ``load_digits``: 1797 real 8x8 digits (16 grey levels)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import ArrayDataModule, images_to_model_space


class DigitsDataModule(ArrayDataModule):
    num_classes = 10

    def __init__(self, image_size: int = 16, resize: str = "resize", **kw) -> None:
        super().__init__(**kw)
        self.image_size, self.resize = image_size, resize

    def load(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)
        return images_to_model_space(images, self.image_size, self.resize), torch.from_numpy(d.target.astype(np.int64))
