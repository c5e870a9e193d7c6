"""Reference statistics of real data, computed once and cached on disk.

``<cache_dir>/fid_stats/<dataset>_<split>_<res>_<extractor>_n<count>_<hash>.npz`` holds the features
(for KID), their mean ``mu`` and covariance ``sigma`` (float64). The key names the dataset, split,
resolution, extractor and sample count for people; the short content hash of the real images makes a
stale file (other data, other preprocessing) impossible to hit by accident.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kakusan.errors import UserError

from .fid import check_extractor, extract_features, feature_stats

log = logging.getLogger(__name__)


def real_images(datamodule, num: int | None, split: str = "train", seed: int = 0) -> Tensor:
    """Real items of a datamodule split for reference statistics: all of them, or a seeded random subset.

    ``real_samples(n)`` returns the *first* n items of a split, and splits may be ordered by class
    (MNIST-5k is), so a prefix would be a biased reference; a random subset (fixed ``seed``) is not.
    """
    if not hasattr(datamodule, "real_samples"):
        raise UserError(f"{type(datamodule).__name__} has no real_samples(num, split): FID needs real data")
    everything = datamodule.real_samples(10**9, split)
    return everything[_subset(len(everything), num, seed)]


def real_labels(datamodule, num: int | None, split: str = "train", seed: int = 0) -> Tensor | None:
    """The class labels of exactly the items :func:`real_images` returns (same ``num``, ``split`` and
    ``seed``), or ``None`` when the datamodule has no ``real_labels(num, split)``."""
    if not hasattr(datamodule, "real_labels"):
        return None
    everything = datamodule.real_labels(10**9, split)
    return everything[_subset(len(everything), num, seed)]


def _subset(n: int, num: int | None, seed: int) -> Tensor | slice:
    if num is None or num >= n:
        return slice(None)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num].sort().values


def content_hash(images: Tensor) -> str:
    """A short hash of the images after the uint8 quantisation the metrics apply (shape included)."""
    from kakusan.images import to_uint8

    h = hashlib.sha1(str(tuple(images.shape)).encode())
    h.update(to_uint8(images.cpu()).numpy().tobytes())
    return h.hexdigest()[:10]


def stats_path(cache_dir: str | Path, dataset: str, split: str, extractor: str, images: Tensor) -> Path:
    res = "x".join(str(s) for s in images.shape[2:])
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset)
    name = f"{safe}_{split}_{res}_{extractor}_n{len(images)}_{content_hash(images)}.npz"
    return Path(cache_dir) / "fid_stats" / name


def reference_stats(images: Tensor, extractor: str, cache_dir: str | Path | None, dataset: str = "data",
                    split: str = "train", batch_size: int = 256, device: str | torch.device | None = None,
                    write: bool = True) -> dict[str, np.ndarray]:
    """``{"feats", "mu", "sigma"}`` of real ``images`` in [-1,1]: read from the cache or computed and saved.

    ``cache_dir=None`` disables caching. ``write=False`` reads but never writes (non-zero DDP ranks).
    The returned dict has ``"cached": True`` when it came from disk.
    """
    check_extractor(extractor)
    path = stats_path(cache_dir, dataset, split, extractor, images) if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            log.info("reference statistics from cache %s", path)
            return {"feats": z["feats"], "mu": z["mu"], "sigma": z["sigma"], "cached": True}
    feats = extract_features(images, extractor, batch_size, device).numpy()
    mu, sigma = feature_stats(feats)
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, feats=feats.astype(np.float32), mu=mu, sigma=sigma)
        os.replace(tmp, path)   # atomic: concurrent writers never leave half a file
        log.info("reference statistics saved to %s", path)
    return {"feats": feats.astype(np.float32), "mu": mu, "sigma": sigma, "cached": False}
