"""Real hand photos (Sign Language Digits, 0-9) with MediaPipe keypoints and self-made hand masks.

Files (under ``data_dir``, see ``../shared/data/README.md``): ``hands/sign_digits_64x64.npz`` and
``hands/sign_digits_mediapipe_hand21.npz``. Only photos whose hand MediaPipe detected are used
(1835 of 2062). Masks come from :mod:`datamodules.hand_masks` on the 64x64 photos.

Two views of the same photos:

- ``view="crop"`` (stage 1, hand generator): the square hand box from the keypoints (with
  ``margin``), resampled to ``crop_size``; ``x`` = RGB + mask, 4 channels in [-1, 1].
- ``view="frame"`` (stage 2 / one-stage): the whole photo at ``image_size``; ``x`` = RGB.

``cond`` holds ``keypoint_map`` (rendered in the item's own frame), ``keypoints`` ``(21, 2)``
normalised in that frame, ``mask`` ``(1, S, S)`` in {0, 1}, ``known`` (RGB inside the mask, 0
elsewhere), ``known_mask`` (= ``mask``) and ``box`` (the crop box in frame coordinates).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ArrayDataModule, DataError, TensorDictDataset, check_batch_size, stratified_split
from .hand_keypoints import check_keypoints, condition_channels, crop, hand_box, render_keypoints, to_crop_coords
from .hand_masks import hand_masks

IMAGES = "hands/sign_digits_64x64.npz"
KEYPOINTS = "hands/sign_digits_mediapipe_hand21.npz"
VIEWS = ("crop", "frame")


@lru_cache(maxsize=2)
def load_hands(data_dir: str) -> dict[str, np.ndarray]:
    """The detected hands: ``images`` uint8 (N,64,64,3), ``labels``, ``keypoints`` (N,21,2) normalised,
    ``masks`` bool (N,64,64), ``index`` (rows of the original files). Masks are computed once per process."""
    root = Path(data_dir)
    paths = [root / IMAGES, root / KEYPOINTS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"hand data not found: {', '.join(missing)}. These are the Sign Language Digits photos "
                        f"(github.com/ardamavi/Sign-Language-Digits-Dataset) with MediaPipe keypoints; set "
                        f"paths.data_dir (or KAKUSAN_DATA_DIR) to the folder holding hands/ (see shared/data/README.md)")
    img, kp = np.load(paths[0]), np.load(paths[1])
    if not np.array_equal(img["filenames"], kp["filenames"]):
        raise DataError(f"{paths[0]} and {paths[1]} list different files; regenerate the keypoints for these images")
    det = kp["detected"].astype(bool)
    images = img["images"][det]
    keypoints = kp["keypoints_2d_norm"][det][..., :2].astype(np.float32)
    size = images.shape[1]
    masks = hand_masks(images, keypoints * size - 0.5)
    return {"images": images, "labels": img["labels"][det].astype(np.int64), "keypoints": keypoints,
            "masks": masks, "index": np.flatnonzero(det)}


def resize_masks(masks: Tensor, size: int) -> Tensor:
    """Binary masks ``(N, 1, H, W)`` -> ``(N, 1, size, size)`` by area averaging and a 0.5 threshold."""
    if masks.shape[-1] == size:
        return masks.float()
    return (F.interpolate(masks.float(), size=(size, size), mode="area") >= 0.5).float()


@lru_cache(maxsize=4)
def view_arrays(data_dir: str, view: str, image_size: int, crop_size: int, keypoint_mode: str,
                keypoint_sigma: float, margin: float, min_side: float) -> dict[str, Tensor]:
    """Every detected photo in one view: ``x``, ``y`` and ``cond.*`` tensors (cached per process)."""
    d = load_hands(data_dir)
    rgb = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    mask = torch.from_numpy(d["masks"])[:, None].float()
    kp = check_keypoints(torch.from_numpy(d["keypoints"]), min_visible=21)
    box = hand_box(kp, margin, min_side)
    if view == "crop":
        size = crop_size
        rgb_v = crop(rgb, box, size).clamp(-1, 1)
        mask_v = (crop(mask, box, size, padding_mode="zeros") >= 0.5).float()
        x, kp_v = torch.cat([rgb_v, mask_v * 2 - 1], 1), to_crop_coords(kp, box)
    else:
        size = image_size
        rgb_v = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False).clamp(-1, 1) if size != rgb.shape[-1] else rgb
        mask_v = resize_masks(mask, size)
        x, kp_v = rgb_v, kp
    kmap = render_keypoints(kp_v, size, keypoint_mode, keypoint_sigma)
    return {"x": x.contiguous(), "y": torch.from_numpy(d["labels"]), "cond.keypoint_map": kmap,
            "cond.keypoints": kp_v.contiguous(), "cond.mask": mask_v, "cond.known": rgb_v * mask_v,
            "cond.known_mask": mask_v, "cond.box": box}


class _HandsDataset(TensorDictDataset):
    """Items ``{"x", "y", "cond": {...}}`` from aligned tensors (``cond.*`` fields are regrouped)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"cond": {}}
        for k, v in self.fields.items():
            if k.startswith("cond."):
                item["cond"][k[5:]] = v[i]
            else:
                item[k] = v[i]
        return item


class HandsDataModule(ArrayDataModule):
    """Hand photos for the two-stage hand pipeline (Pelykh et al. 2024); see the module docstring."""

    num_classes = 10

    def __init__(self, data_dir: str, view: str = "crop", image_size: int = 32, crop_size: int = 32,
                 keypoint_mode: str = "skeleton", keypoint_sigma: float = 1.0, margin: float = 0.25,
                 min_side: float = 0.25, **kw) -> None:
        super().__init__(**kw)
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; choose crop (stage 1) or frame (stage 2)")
        condition_channels(keypoint_mode)
        self.data_dir, self.view, self.image_size, self.crop_size = str(data_dir), view, image_size, crop_size
        self.keypoint_mode, self.keypoint_sigma = keypoint_mode, keypoint_sigma
        self.margin, self.min_side = margin, min_side

    @property
    def cond_channels(self) -> int:
        return condition_channels(self.keypoint_mode)

    def arrays(self) -> dict[str, Tensor]:
        """Every detected photo in this datamodule's view: ``x``, ``y`` and ``cond.*`` tensors (cached per process)."""
        return dict(view_arrays(self.data_dir, self.view, self.image_size, self.crop_size, self.keypoint_mode,
                                 self.keypoint_sigma, self.margin, self.min_side))


    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        fields = self.arrays()
        self.data_shape = tuple(fields["x"].shape[1:])
        tr, va = stratified_split(fields["y"].numpy(), len(fields["x"]), self.val_fraction, self.split_seed)
        check_batch_size(self.batch_size, len(tr))
        if not self.conditional:
            fields.pop("y")
        self.train_set = _HandsDataset(**{k: v[tr] for k, v in fields.items()})
        self.val_set = _HandsDataset(**{k: v[va] for k, v in fields.items()})

    def real_batch(self, num: int, split: str = "val") -> dict[str, Any]:
        """``num`` items of a split spread evenly over it (every digit; fixed order), as one collated batch."""
        self.setup()
        ds = self.val_set if split == "val" else self.train_set
        n = min(num, len(ds))
        idx = torch.linspace(0, len(ds) - 1, n).round().long()
        fields = {k: v[idx] for k, v in ds.fields.items()}
        batch: dict[str, Any] = {k: v for k, v in fields.items() if not k.startswith("cond.")}
        batch["cond"] = {k[5:]: v for k, v in fields.items() if k.startswith("cond.")}
        return batch
