"""Users' captioned images: a folder of images plus a captions file, for text-to-image models.

Captions file (in the folder by default):
- CSV with a header ``file,caption``: one row per image, ``file`` relative to the folder;
- JSONL: one object per line, ``{"file": "a/b.png", "text": "a red car"}`` (``caption`` also accepted).

Every problem is a :class:`DataError` naming the files: a missing captions file, captions that
point to missing files, unreadable images, and images without a caption (``missing_caption=skip``
leaves those out instead). Images are held in memory (small and medium datasets).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .base import (ArrayDataModule, DataError, TensorDictDataset, check_batch_size, images_to_model_space,
                   stratified_split)
from .image_folder import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


def _names(items: list[str], k: int = 5) -> str:
    more = f" and {len(items) - k} more" if len(items) > k else ""
    return ", ".join(items[:k]) + more


def read_captions(path: Path) -> dict[str, str]:
    """``{relative file: caption}`` from a CSV (``file,caption``) or JSONL (``file`` + ``text``) file."""
    if not path.is_file():
        raise DataError(f"captions file {path} not found; put a CSV with header 'file,caption' or a JSONL with "
                        f"{{\"file\": ..., \"text\": ...}} lines there, or set data.captions to its path")
    out: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the CSV header must name the columns 'file' and 'caption' "
                                f"(found {reader.fieldnames})")
            for row in reader:
                out[row["file"].strip()] = (row["caption"] or "").strip()
    elif path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON ({e})") from e
                text = obj.get("text", obj.get("caption"))
                if "file" not in obj or text is None:
                    raise DataError(f"{path}, line {n}: each line needs 'file' and 'text' (or 'caption') keys")
                out[str(obj["file"]).strip()] = str(text).strip()
    else:
        raise DataError(f"{path}: captions must be a .csv (file,caption) or .jsonl file")
    if not out:
        raise DataError(f"{path} holds no captions")
    return out


class CaptionFolderDataModule(ArrayDataModule):
    """Images under ``path`` with captions from ``captions`` (default: ``captions.csv`` or
    ``captions.jsonl`` inside ``path``). Batches: ``x`` in [-1,1] and ``text``."""

    def __init__(self, path: str, captions: str | None = None, image_size: int = 64, channels: int = 3,
                 resize: str = "resize", missing_caption: str = "fail", **kw) -> None:
        kw.setdefault("conditional", False)
        super().__init__(**kw)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if missing_caption not in ("fail", "skip"):
            raise ValueError(f"missing_caption must be 'fail' or 'skip', got {missing_caption!r}")
        self.path, self.captions_path = Path(path), Path(captions) if captions else None
        self.image_size, self.channels, self.resize, self.missing_caption = image_size, channels, resize, missing_caption
        self.texts: list[str] = []

    def _captions_file(self) -> Path:
        if self.captions_path is not None:
            return self.captions_path
        for name in ("captions.csv", "captions.jsonl"):
            if (self.path / name).is_file():
                return self.path / name
        return self.path / "captions.csv"

    def load(self) -> tuple[Tensor, None]:
        if not self.path.is_dir():
            raise DataError(f"image folder {self.path} does not exist; set data.path to a folder of captioned images")
        captions = read_captions(self._captions_file())
        missing = [f for f in captions if not (self.path / f).is_file()]
        if missing:
            raise DataError(f"{len(missing)} file(s) named in {self._captions_file()} do not exist under {self.path}: "
                            f"{_names(missing)}")
        files = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        uncaptioned = [f for f in files if f not in captions]
        if uncaptioned and self.missing_caption == "fail":
            raise DataError(f"{len(uncaptioned)} image(s) under {self.path} have no caption in "
                            f"{self._captions_file()}: {_names(uncaptioned)}. Add captions or set "
                            f"data.missing_caption=skip")
        mode = {1: "L", 3: "RGB"}[self.channels]
        images, texts = [], []
        for f in sorted(captions):
            try:
                with Image.open(self.path / f) as im:
                    arr = np.asarray(im.convert(mode))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"cannot read image {self.path / f}: {e}. Fix or remove it (and its caption)") from e
            images.append(images_to_model_space(arr[None], self.image_size, self.resize))
            texts.append(captions[f])
        self.texts = texts
        return torch.cat(images), None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, _ = self.load()
        self.data_shape = tuple(x.shape[1:])
        tr, va = stratified_split(None, len(x), self.val_fraction, self.split_seed)
        check_batch_size(self.batch_size, len(tr))
        text = np.asarray(self.texts, dtype=object)
        self.train_set = TensorDictDataset(x=x[tr], text=text[tr].tolist())
        self.val_set = TensorDictDataset(x=x[va], text=text[va].tolist()) if len(va) else TensorDictDataset(
            x=x[tr[:1]], text=text[tr[:1]].tolist())

    def caption_corpus(self) -> list[str]:
        self.setup()
        return list(self.texts)
