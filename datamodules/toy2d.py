"""2-D toy distributions: two moons, swiss roll, 8 gaussians, checkerboard."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import ArrayDataModule

DISTRIBUTIONS = ("two_moons", "swiss_roll", "8gaussians", "checkerboard")


def sample_toy2d(name: str, n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """``n`` points of a named 2-D distribution, scaled to roughly [-1, 1]^2."""
    rng = np.random.default_rng(seed)
    if name == "two_moons":
        from sklearn.datasets import make_moons

        pts, _ = make_moons(n, noise=noise, random_state=int(rng.integers(2**31)))
        pts = (pts - np.array([0.5, 0.25])) / np.array([1.5, 1.0])
    elif name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        pts, _ = make_swiss_roll(n, noise=noise * 10, random_state=int(rng.integers(2**31)))
        pts = pts[:, [0, 2]] / 12.0
    elif name == "8gaussians":
        centers = np.array([(math.cos(a), math.sin(a)) for a in np.arange(8) * math.pi / 4])
        pts = centers[rng.integers(0, 8, n)] * 0.8 + rng.normal(scale=noise * 1.2, size=(n, 2))
    elif name == "checkerboard":
        x1 = rng.uniform(-1, 1, n)
        x2 = rng.uniform(0, 0.5, n) - rng.integers(0, 2, n) * 0.5
        x2 = x2 + (np.floor(x1 * 2) % 2) * 0.5
        pts = np.stack([x1, x2 * 2 - 0.0], axis=1)
        pts[:, 1] = pts[:, 1] - pts[:, 1].mean()
    else:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return pts.astype(np.float32)


class Toy2DDataModule(ArrayDataModule):
    """Batches ``{"x": (B, 2)}`` of points from a fixed sample of the chosen distribution."""

    def __init__(self, name: str = "two_moons", num_points: int = 8000, noise: float = 0.05, seed: int = 0, **kw) -> None:
        kw.setdefault("conditional", False)
        super().__init__(**kw)
        if name not in DISTRIBUTIONS:
            raise ValueError(f"unknown toy distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
        self.name, self.num_points, self.noise, self.seed = name, num_points, noise, seed

    def load(self) -> tuple[Tensor, None]:
        return torch.from_numpy(sample_toy2d(self.name, self.num_points, self.seed, self.noise)), None
