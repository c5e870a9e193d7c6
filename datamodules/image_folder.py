"""Users' own images: a folder (optionally with one sub-folder per class) or an ``.npz`` file."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .base import ArrayDataModule, DataError, images_to_model_space

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image_folder(root: Path, channels: int, on_error: str = "fail") -> tuple[list[np.ndarray], list[int], list[str], list[str]]:
    """Read every image below ``root``. Class sub-folders give labels (sorted names -> 0..K-1).

    ``on_error='fail'`` stops at the first unreadable file, naming it; ``'skip'`` logs and skips it.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    subdirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    classes = subdirs if subdirs and all(p.parent != root for p in files) else []
    images, labels, skipped = [], [], []
    mode = {1: "L", 3: "RGB"}[channels]
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert(mode)))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            if on_error == "fail":
                raise DataError(f"cannot read image {p}: {e}. Remove or fix the file, or set data.on_error=skip") from e
            log.warning("skipping unreadable image %s (%s)", p, e)
            skipped.append(str(p))
            continue
        labels.append(classes.index(p.relative_to(root).parts[0]) if classes else -1)
    return images, labels, classes, skipped


class ImageFolderDataModule(ArrayDataModule):
    """Images from ``path``: a folder of image files, or an ``.npz`` with ``images`` (uint8) and optional ``labels``.

    All images must share one size unless ``resize`` is ``'resize'``; with ``expect_size`` set, any
    other size is an error (``check_size=true``) naming the first offending file.
    """

    def __init__(self, path: str, image_size: int = 32, channels: int = 3, resize: str = "resize",
                 on_error: str = "fail", expect_size: int | None = None, **kw) -> None:
        super().__init__(**kw)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.path, self.image_size, self.channels, self.resize = Path(path), image_size, channels, resize
        self.on_error, self.expect_size = on_error, expect_size
        self.classes: list[str] = []
        self.skipped: list[str] = []

    def load(self) -> tuple[Tensor, Tensor | None]:
        p = self.path
        if not p.exists():
            raise DataError(f"dataset path {p} does not exist; set data.path to a folder of images or an .npz file")
        if p.is_file():
            if p.suffix != ".npz":
                raise DataError(f"{p}: expected a folder of images or an .npz file")
            with np.load(p) as z:
                if "images" not in z:
                    raise DataError(f"{p}: the .npz has no 'images' array (keys: {', '.join(z.files)})")
                imgs = z["images"]
                labels = z["labels"] if "labels" in z else None
            if imgs.ndim not in (3, 4):
                raise DataError(f"{p}: 'images' must be (N,H,W) or (N,H,W,C), got shape {imgs.shape}")
            arr = imgs
            if self.expect_size is not None and arr.shape[1:3] != (self.expect_size, self.expect_size):
                raise DataError(f"{p}: images are {arr.shape[1]}x{arr.shape[2]}, expected {self.expect_size}x{self.expect_size}")
            if arr.ndim == 4 and arr.shape[-1] != self.channels:
                arr = arr.mean(-1).astype(np.uint8) if self.channels == 1 else np.repeat(arr[..., :1], 3, -1)
            elif arr.ndim == 3 and self.channels == 3:
                arr = np.repeat(arr[..., None], 3, -1)
            y = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
            return images_to_model_space(arr.astype(np.uint8), self.image_size, self.resize), y
        images, labels, self.classes, self.skipped = read_image_folder(p, self.channels, self.on_error)
        if not images:
            raise DataError(f"every image under {p} was unreadable")
        sizes = {im.shape[:2] for im in images}
        if self.expect_size is not None:
            for im, f in zip(images, sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)):
                if im.shape[:2] != (self.expect_size, self.expect_size):
                    raise DataError(f"{f}: image is {im.shape[0]}x{im.shape[1]}, expected {self.expect_size}x{self.expect_size}")
        if len(sizes) > 1 and self.resize != "resize":
            raise DataError(f"images under {p} have different sizes {sorted(sizes)}; set data.resize=resize")
        tensors = [images_to_model_space(im[None], self.image_size, self.resize) for im in images]
        y = torch.tensor(labels) if self.classes else None
        return torch.cat(tensors), y
