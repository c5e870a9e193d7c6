"""Users' own videos (e.g. UCF-101): one sub-folder per class, each holding clips.

A clip is any of
- a folder of frame images (sorted by name),
- an ``.npy`` array ``(T, H, W)`` or ``(T, H, W, C)`` uint8,
- a video file (``.mp4 .avi .mov .mkv .webm .gif``) read through ``imageio`` (its ffmpeg or pyav
  plugin for anything but GIF: ``pip install imageio-ffmpeg`` or ``pip install av``).

Without class sub-folders the clips sit directly in ``path`` (unconditional). Each video gives
up to ``clips_per_video`` windows of ``frames`` frames taken every ``frame_stride`` frames
(non-overlapping, from the start). Frames are resized (shorter side) and centre-cropped to
``image_size``. Clips are read lazily in ``__getitem__``; only the index is built up front.
Unreadable files are named: ``on_error='fail'`` stops, ``'skip'`` logs them in ``skipped``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .base import DataError, SplitLoadersMixin, check_batch_size, stratified_split
from .image_folder import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg"}
FRAME_SUFFIXES = IMAGE_SUFFIXES - {".gif"}  # a .gif is a clip, never one frame


def _is_clip_dir(p: Path) -> bool:
    return p.is_dir() and any(q.suffix.lower() in FRAME_SUFFIXES for q in p.iterdir() if q.is_file())


def _is_clip(p: Path) -> bool:
    return _is_clip_dir(p) or (p.is_file() and (p.suffix.lower() == ".npy" or p.suffix.lower() in VIDEO_SUFFIXES))


def read_video_file(path: Path) -> np.ndarray:
    """All frames of a video file as uint8 ``(T, H, W, C)`` through imageio."""
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise DataError(f"reading {path} needs imageio: pip install imageio imageio-ffmpeg") from e
    try:
        return np.asarray(iio.imread(path, index=None))
    except (ImportError, ModuleNotFoundError, ValueError, OSError, RuntimeError) as e:
        text = str(e).lower()
        if path.suffix.lower() != ".gif" and ("plugin" in text or "backend" in text or "ffmpeg" in text
                                               or isinstance(e, ImportError)):
            raise DataError(f"cannot decode {path}: imageio has no video plugin for {path.suffix} files. "
                            f"Install one with 'pip install imageio-ffmpeg' (or 'pip install av'), or convert "
                            f"the clip to a folder of frames or an .npy array. ({e})") from e
        raise


def read_clip(path: Path) -> np.ndarray:
    """The whole clip as uint8 ``(T, H, W)`` or ``(T, H, W, C)``."""
    if path.is_dir():
        files = sorted(q for q in path.iterdir() if q.suffix.lower() in FRAME_SUFFIXES)
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(np.asarray(im.convert("RGB")))
        return np.stack(frames)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim not in (3, 4) or arr.dtype != np.uint8:
            raise DataError(f"{path}: expected a uint8 array (T,H,W) or (T,H,W,C), got {arr.dtype} {arr.shape}")
        return arr
    return read_video_file(path)


def clip_length(path: Path) -> int:
    """Number of frames, reading as little as possible (frame count of a folder, header of an .npy)."""
    if path.is_dir():
        return sum(1 for q in path.iterdir() if q.suffix.lower() in FRAME_SUFFIXES)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim not in (3, 4) or arr.dtype != np.uint8:
            raise DataError(f"{path}: expected a uint8 array (T,H,W) or (T,H,W,C), got {arr.dtype} {arr.shape}")
        return arr.shape[0]
    return len(read_video_file(path))


def frames_to_model_space(frames: np.ndarray, image_size: int, channels: int) -> Tensor:
    """uint8 ``(T,H,W[,C])`` -> float ``(T, channels, S, S)`` in [-1, 1]: resize the shorter side, centre crop."""
    out = []
    for f in frames:
        im = Image.fromarray(np.asarray(f)).convert("L" if channels == 1 else "RGB")
        w, h = im.size
        s = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * s)), max(image_size, round(h * s))), Image.BICUBIC)
        left, top = (im.width - image_size) // 2, (im.height - image_size) // 2
        arr = np.asarray(im.crop((left, top, left + image_size, top + image_size)))
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class VideoClipDataset(Dataset):
    """Items ``{"x": (T, C, S, S), "y": class}`` read from ``(path, start)`` windows on demand."""

    def __init__(self, windows: list[tuple[Path, int, int]], frames: int, stride: int, image_size: int,
                 channels: int, conditional: bool) -> None:
        self.windows, self.frames, self.stride = windows, frames, stride
        self.image_size, self.channels, self.conditional = image_size, channels, conditional

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, start, label = self.windows[i]
        clip = read_clip(path)
        idx = start + self.stride * np.arange(self.frames)
        item = {"x": frames_to_model_space(np.asarray(clip[idx]), self.image_size, self.channels)}
        if self.conditional and label >= 0:
            item["y"] = label
        return item


class VideoFolderDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Clips from ``path`` (see the module doc), split by video with a fixed seed."""

    def __init__(self, path: str, frames: int = 16, frame_stride: int = 1, image_size: int = 64, channels: int = 3,
                 clips_per_video: int = 1, on_error: str = "fail", val_fraction: float = 0.1, split_seed: int = 0,
                 batch_size: int = 8, num_workers: int = 0, pin_memory: bool = False, conditional: bool = True,
                 download_hint: str | None = None) -> None:
        super().__init__()
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        if channels not in (1, 3) or frames < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError("need channels in (1, 3), frames >= 1, frame_stride >= 1, clips_per_video >= 1")
        self.path, self.frames, self.stride, self.image_size = Path(path), frames, frame_stride, image_size
        self.channels, self.clips_per_video, self.on_error = channels, clips_per_video, on_error
        self.val_fraction, self.split_seed, self.batch_size = val_fraction, split_seed, batch_size
        self.num_workers, self.pin_memory, self.conditional = num_workers, pin_memory, conditional
        self.download_hint = download_hint
        self.data_shape = (frames, channels, image_size, image_size)
        self.classes: list[str] = []
        self.skipped: list[str] = []
        self.train_set: VideoClipDataset | None = None
        self.val_set: VideoClipDataset | None = None

    def find_clips(self) -> list[tuple[Path, int]]:
        """``(clip path, class index or -1)`` for every clip under ``path``."""
        root = self.path
        if not root.is_dir():
            hint = f" {self.download_hint}" if self.download_hint else ""
            raise DataError(f"video folder {root} does not exist; set data.path to a folder of clips "
                            f"(class sub-folders of frame folders, .npy arrays or video files).{hint}")
        entries = sorted(root.iterdir())
        if any(_is_clip(p) for p in entries):
            clips = [(p, -1) for p in entries if _is_clip(p)]
        else:
            self.classes = [p.name for p in entries if p.is_dir()]
            clips = [(q, k) for k, name in enumerate(self.classes) for q in sorted((root / name).iterdir()) if _is_clip(q)]
        if not clips:
            raise DataError(f"no clips found under {root}: expected frame folders, .npy arrays or video files "
                            f"({', '.join(sorted(VIDEO_SUFFIXES))}), optionally in class sub-folders")
        return clips

    def build_windows(self) -> list[tuple[Path, int, int]]:
        span = (self.frames - 1) * self.stride + 1
        windows = []
        for path, label in self.find_clips():
            try:
                n = clip_length(path)
            except Exception as e:  # noqa: BLE001 - every reader error names the file
                if isinstance(e, DataError) and self.on_error == "fail":
                    raise
                if self.on_error == "fail":
                    raise DataError(f"cannot read clip {path}: {e}. Remove or fix it, or set data.on_error=skip") from e
                log.warning("skipping unreadable clip %s (%s)", path, e)
                self.skipped.append(str(path))
                continue
            if n < span:
                log.warning("skipping %s: %d frames, fewer than frames=%d x stride=%d needs", path, n, self.frames, self.stride)
                self.skipped.append(str(path))
                continue
            starts = range(0, n - span + 1, span)[: self.clips_per_video]
            windows += [(path, s, label) for s in starts]
        if not windows:
            raise DataError(f"no clip under {self.path} has the {span} frames that frames={self.frames} and "
                            f"frame_stride={self.stride} need (skipped: {self.skipped[:5]})")
        return windows

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        windows = self.build_windows()
        label_of = {w[0]: w[2] for w in windows}
        videos = sorted(label_of)
        labels = np.array([label_of[v] for v in videos])
        tr, va = stratified_split(labels if self.classes else None, len(videos), self.val_fraction, self.split_seed)
        train_videos = {videos[i] for i in tr}
        args = (self.frames, self.stride, self.image_size, self.channels, self.conditional and bool(self.classes))
        self.train_set = VideoClipDataset([w for w in windows if w[0] in train_videos], *args)
        self.val_set = VideoClipDataset([w for w in windows if w[0] not in train_videos], *args)
        check_batch_size(self.batch_size, len(self.train_set), "clips")

    def real_samples(self, num: int, split: str = "val") -> Tensor:
        self.setup()
        ds = self.val_set if split == "val" else self.train_set
        return torch.stack([ds[i]["x"] for i in range(min(num, len(ds)))])
