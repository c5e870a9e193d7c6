"""MNIST-5k with short captions made from the labels, for text-conditional models on a CPU.

Each digit gets one caption from varied templates ("a handwritten seven", "the digit 7, written
thinly", "a 7", ...), using the number word or the numeral. The choice depends only on the item
index and ``caption_seed``, so captions are the same in every run and every worker.
Batches: ``x`` (B,1,S,S) in [-1,1], ``y`` labels, ``text`` list of str.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import TensorDictDataset, stratified_split
from .mnist import MNISTDataModule

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {n}: the number as word or numeral (chosen per item); {a} the matching article ("a" / "an").
TEMPLATES = (
    "{a} handwritten {n}",
    "a handwritten digit {n}",
    "the digit {n}, written thinly",
    "the digit {n}, written boldly",
    "{a} {n}",
    "the number {n}",
    "a picture of {a} {n}",
    "{n} written by hand",
    "a scribbled {n}",
    "{n}",
    "an image of the digit {n}",
    "a small handwritten {n} on black",
)


def number_text(label: int, as_word: bool) -> str:
    return NUMBER_WORDS[label] if as_word else str(label)


def caption(label: int, index: int, seed: int = 0) -> str:
    """The caption of item ``index`` with class ``label``: deterministic per (seed, index)."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"MNIST labels lie in 0..9, got {label}")
    rng = np.random.default_rng([int(seed), int(index)])
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    n = number_text(int(label), bool(rng.integers(2)))
    article = "an" if int(label) == 8 else "a"
    return template.format(n=n, a=article)


def all_captions() -> list[str]:
    """Every caption the templates can produce (for building a tokenizer vocabulary)."""
    out = []
    for label in range(10):
        for template in TEMPLATES:
            for as_word in (True, False):
                out.append(template.format(n=number_text(label, as_word), a="an" if label == 8 else "a"))
    return out


class CaptionedMNISTDataModule(MNISTDataModule):
    """MNIST-5k with template captions (``text``) and labels (``y``)."""

    def __init__(self, caption_seed: int = 0, **kw) -> None:
        kw.setdefault("conditional", True)
        super().__init__(**kw)
        self.caption_seed = caption_seed
        self.captions: list[str] | None = None

    def load(self) -> tuple[Tensor, Tensor]:
        x, y = super().load()
        self.captions = [caption(int(label), i, self.caption_seed) for i, label in enumerate(y.tolist())]
        return x, y

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self.load()
        self.data_shape = tuple(x.shape[1:])
        tr, va = stratified_split(y.numpy(), len(x), self.val_fraction, self.split_seed)
        text = np.asarray(self.captions, dtype=object)
        self.train_set = TensorDictDataset(x=x[tr], y=y[tr], text=text[tr].tolist())
        self.val_set = TensorDictDataset(x=x[va], y=y[va], text=text[va].tolist())

    def caption_corpus(self) -> list[str]:
        """Texts a tokenizer should know: every template caption."""
        return all_captions()
