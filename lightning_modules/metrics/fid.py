"""FID and KID: functions and torchmetrics ``Metric`` classes, over two feature extractors.

- ``extractor="inception"``: Inception FID/KID with clean-fid's "clean" protocol (see
  :mod:`.inception`); these are the numbers papers report (``fid_inception``, ``kid_inception``).
- ``extractor="digits"``: our MNIST classifier's 128-d features (:mod:`.digits_classifier`): a fast,
  domain-specific Fréchet distance named ``fid_digits``; never compare it with Inception FID.

The distances themselves are clean-fid's ``frechet_distance`` and ``kernel_distance`` (float64).
Images are ``(B,C,H,W)`` tensors in [-1,1].
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from kakusan.errors import UserError

EXTRACTORS = ("digits", "inception")


def feature_dim(extractor: str) -> int:
    check_extractor(extractor)
    if extractor == "digits":
        from .digits_classifier import FEATURE_DIM
    else:
        from .inception import FEATURE_DIM
    return FEATURE_DIM


def check_extractor(extractor: str) -> None:
    if extractor not in EXTRACTORS:
        raise UserError(f"unknown FID feature extractor '{extractor}'; choose one of {', '.join(EXTRACTORS)} "
                        f"(digits = MNIST classifier features, inception = clean-fid Inception-v3)")


def prepare_extractor(extractor: str, device: str | torch.device | None = None) -> None:
    """Load the extractor's weights now (through the resolver) so a missing file fails early."""
    check_extractor(extractor)
    if extractor == "digits":
        from .digits_classifier import load_digits_classifier

        load_digits_classifier(device=device)
    else:
        from .inception import load_inception

        load_inception(device)


def extract_features(images: Tensor, extractor: str = "digits", batch_size: int = 256,
                     device: str | torch.device | None = None) -> Tensor:
    """(N, D) float32 CPU features of ``images`` in [-1,1]."""
    check_extractor(extractor)
    if len(images) == 0:
        raise UserError("cannot compute features of an empty set of images")
    if extractor == "digits":
        from .digits_classifier import digits_features

        return digits_features(images, batch_size, device)
    from .inception import inception_features

    return inception_features(images, min(batch_size, 64), device)


def feature_stats(feats: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples, unbiased), as clean-fid computes them, in float64."""
    f = np.asarray(feats.cpu() if isinstance(feats, Tensor) else feats, dtype=np.float64)
    if f.shape[0] < 2:
        raise UserError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's Fréchet distance between two Gaussians (float)."""
    from cleanfid.fid import frechet_distance as _fd

    return float(_fd(mu1, sigma1, mu2, sigma2))


def kernel_distance(feats1: Tensor | np.ndarray, feats2: Tensor | np.ndarray, num_subsets: int = 100,
                    max_subset_size: int = 1000, seed: int = 0) -> float:
    """clean-fid's KID (unbiased MMD^2, cubic polynomial kernel, averaged over random subsets).

    clean-fid draws subsets from NumPy's global RNG; here it is seeded with ``seed`` and restored after.
    """
    from cleanfid.fid import kernel_distance as _kd

    f1 = np.asarray(feats1.cpu() if isinstance(feats1, Tensor) else feats1, dtype=np.float64)
    f2 = np.asarray(feats2.cpu() if isinstance(feats2, Tensor) else feats2, dtype=np.float64)
    if min(len(f1), len(f2)) < 2:
        raise UserError(f"KID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(_kd(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def fid_from_features(fake: Tensor | np.ndarray, real: Tensor | np.ndarray) -> float:
    return frechet_distance(*feature_stats(fake), *feature_stats(real))


def compute_fid(fake: Tensor, real: Tensor, extractor: str = "digits", batch_size: int = 256,
                device: str | torch.device | None = None) -> float:
    """Fréchet distance between ``fake`` and ``real`` images in [-1,1] (``extractor``: digits | inception)."""
    return fid_from_features(extract_features(fake, extractor, batch_size, device),
                             extract_features(real, extractor, batch_size, device))


def compute_kid(fake: Tensor, real: Tensor, extractor: str = "inception", batch_size: int = 256,
                device: str | torch.device | None = None, num_subsets: int = 100, max_subset_size: int = 1000,
                seed: int = 0) -> float:
    """Kernel Inception Distance (clean-fid's estimator; seeded subsets) between two image sets in [-1,1]."""
    return kernel_distance(extract_features(fake, extractor, batch_size, device),
                           extract_features(real, extractor, batch_size, device),
                           num_subsets, max_subset_size, seed)


class _FeatureMetric(Metric):
    """Shared part: run the extractor on ``update(images, real=...)``; the extractor lives outside the
    metric's state (it is loaded once per process and not saved with the metric)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, extractor: str = "digits", batch_size: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        check_extractor(extractor)
        self.extractor, self.batch_size = extractor, batch_size
        self.dim = feature_dim(extractor)

    def update(self, images: Tensor, real: bool) -> None:  # noqa: D102
        feats = extract_features(images, self.extractor, self.batch_size, self.device)
        self.update_features(feats.to(self.device, torch.float64), real)

    def update_features(self, feats: Tensor, real: bool) -> None:
        raise NotImplementedError


class FrechetDistance(_FeatureMetric):
    """FID (``extractor="inception"``) or ``fid_digits`` (``extractor="digits"``) as a torchmetrics Metric.

    States are float64 sums (count, sum, sum of outer products) reduced by summation, so DDP ranks
    may see different images; memory does not grow with the number of samples.
    """

    higher_is_better = False

    def __init__(self, extractor: str = "digits", batch_size: int = 256, **kwargs) -> None:
        super().__init__(extractor, batch_size, **kwargs)
        d = self.dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")

    def update_features(self, feats: Tensor, real: bool) -> None:
        side = "real" if real else "fake"
        f = feats.to(self.device, torch.float64)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def _stats(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        n = float(getattr(self, f"{side}_n"))
        if n < 2:
            raise UserError(f"FrechetDistance needs at least 2 {side} images, got {int(n)}")
        s = getattr(self, f"{side}_sum").cpu().numpy()
        outer = getattr(self, f"{side}_outer").cpu().numpy()
        mu = s / n
        return mu, (outer - n * np.outer(mu, mu)) / (n - 1)

    def compute(self) -> Tensor:
        return torch.tensor(frechet_distance(*self._stats("fake"), *self._stats("real")), dtype=torch.float64)


class KernelDistance(_FeatureMetric):
    """KID as a torchmetrics Metric: features are kept (``dist_reduce_fx="cat"``), clean-fid's estimator."""

    higher_is_better = False

    def __init__(self, extractor: str = "inception", batch_size: int = 256, num_subsets: int = 100,
                 max_subset_size: int = 1000, seed: int = 0, **kwargs) -> None:
        super().__init__(extractor, batch_size, **kwargs)
        self.num_subsets, self.max_subset_size, self.seed = num_subsets, max_subset_size, seed
        self.add_state("real_feats", [], dist_reduce_fx="cat")
        self.add_state("fake_feats", [], dist_reduce_fx="cat")

    def update_features(self, feats: Tensor, real: bool) -> None:
        (self.real_feats if real else self.fake_feats).append(feats.to(self.device, torch.float64))

    def compute(self) -> Tensor:
        from torchmetrics.utilities import dim_zero_cat

        real, fake = dim_zero_cat(self.real_feats), dim_zero_cat(self.fake_feats)
        return torch.tensor(kernel_distance(fake, real, self.num_subsets, self.max_subset_size, self.seed),
                            dtype=torch.float64)
