"""A word-level tokenizer for small caption vocabularies (offline text conditioning).

Lower-cases, splits into words and punctuation, maps words to ids with four special tokens
(``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3) and returns a padding mask. It is an
``nn.Module`` whose vocabulary lives in a ``uint8`` buffer, so it travels inside every
checkpoint's ``state_dict`` and is rebuilt on load (any vocabulary size).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer(nn.Module):
    """Args:
        vocab: words (without special tokens); may be empty and filled later by :meth:`fit`.
        max_length: tokens per prompt including ``<bos>``/``<eos>``; longer prompts are truncated.
        max_vocab: capacity (the text encoder's embedding table size), special tokens included.
    """

    def __init__(self, vocab: Sequence[str] | None = None, max_length: int = 16, max_vocab: int = 256) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for <bos> and <eos>), got {max_length}")
        self.max_length, self.max_vocab = max_length, max_vocab
        self.register_buffer("vocab_bytes", torch.zeros(0, dtype=torch.uint8))
        self._set_words(list(vocab or []))

    # ----------------------------------------------------------------- vocabulary
    def _set_words(self, words: list[str]) -> None:
        seen, clean = set(SPECIALS), []
        for w in words:
            if w not in seen:
                seen.add(w)
                clean.append(w)
        if len(clean) + len(SPECIALS) > self.max_vocab:
            raise ValueError(f"vocabulary of {len(clean) + len(SPECIALS)} tokens exceeds max_vocab={self.max_vocab}; "
                             f"raise model.tokenizer.max_vocab")
        self.words = list(SPECIALS) + clean
        self.index = {w: i for i, w in enumerate(self.words)}
        data = "\n".join(clean).encode("utf-8")
        self.vocab_bytes = torch.tensor(list(data), dtype=torch.uint8, device=self.vocab_bytes.device)

    def fit(self, texts: Iterable[str]) -> "WordTokenizer":
        """Build the vocabulary from captions: every word, sorted (deterministic)."""
        words = sorted({w for t in texts for w in split_words(t)})
        self._set_words(words)
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def is_fitted(self) -> bool:
        return len(self.words) > len(SPECIALS)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "vocab_bytes"
        if key in state_dict:  # any stored size: rebuild the vocabulary from it
            data = bytes(state_dict[key].cpu().tolist()).decode("utf-8")
            self._set_words(data.split("\n") if data else [])
            state_dict = {**state_dict, key: self.vocab_bytes}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- encoding
    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(ids (B, L) long, mask (B, L) bool)``; mask is True on real tokens (``<bos>``..``<eos>``)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of prompts, not a single string")
        ids = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            toks = [self.index.get(w, UNK) for w in split_words(text)][: self.max_length - 2]
            row = [BOS, *toks, EOS]
            ids[i, : len(row)] = torch.tensor(row)
        device = device if device is not None else self.vocab_bytes.device
        ids = ids.to(device)
        return ids, ids != PAD

    def decode(self, ids: Tensor) -> list[str]:
        out = []
        for row in ids.tolist():
            words = [self.words[i] for i in row if i not in (PAD, BOS, EOS)]
            out.append(" ".join(words))
        return out

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.encode(texts)
