"""Text encoders for cross-attention conditioning, and the wrapper that feeds them to a denoiser.

- :class:`TransformerTextEncoder`: a small trainable transformer over a word-level vocabulary
  (offline; trained jointly with the U-Net).
- :class:`CLIPTextEncoder`: a frozen CLIP text tower (``transformers.CLIPTextModel``) loaded from a
  local folder, as Stable Diffusion does; never downloads unless the folder is absent, the
  network is allowed and ``allow_download`` is set.
- :class:`TextConditionedNet`: ``net(x, t, tokens=, token_mask=)`` running a trainable encoder
  inside the denoiser, so one optimiser and one EMA cover both.

Every encoder exposes ``tokenize(texts, device) -> (ids, mask)``, ``forward(ids, mask) -> context``,
``dim`` and ``trainable``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from kakusan.errors import UserError

from .tokenizer import WordTokenizer


def resolve_pretrained(path: str | None, what: str, hub_id: str | None = None, allow_download: bool = False) -> str:
    """A local folder if it exists; a hub id only when downloads are allowed and the network is on.

    Otherwise a :class:`UserError` naming the folder and how to fill it.
    """
    if path and Path(path).expanduser().is_dir():
        return str(Path(path).expanduser())
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if allow_download and hub_id and not offline:
        return hub_id
    raise UserError(f"the {what} weights were not found at {path!r}. Put a saved copy there (e.g. on a machine "
                    f"with internet: `from_pretrained({hub_id!r}).save_pretrained(<folder>)`, then copy the folder) "
                    f"and point the config at it, or set allow_download=true where the network is reachable.")


class TransformerTextEncoder(nn.Module):
    """Token + position embeddings, ``num_layers`` pre-norm transformer layers, final LayerNorm."""

    trainable = True

    def __init__(self, tokenizer: WordTokenizer, dim: int = 64, num_layers: int = 2, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.tokenizer, self.dim = tokenizer, dim
        self.token_emb = nn.Embedding(tokenizer.max_vocab, dim)
        self.pos_emb = nn.Parameter(torch.randn(tokenizer.max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        return self.tokenizer.encode(texts, device)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = self.token_emb(ids) + self.pos_emb[: ids.shape[1]]
        return self.norm(self.layers(h, src_key_padding_mask=~mask.bool()))


class CLIPTextEncoder(nn.Module):
    """Frozen CLIP text tower from a local ``transformers`` folder (with ``tokenizer/`` or tokenizer files).

    ``path`` is either the text-encoder folder itself or a Stable-Diffusion folder holding
    ``text_encoder/`` and ``tokenizer/``. Stable Diffusion attends to all 77 positions, so the
    returned mask is all-True unless ``use_mask``.
    """

    trainable = False

    def __init__(self, path: str, max_length: int = 77, use_mask: bool = False, dim: int = 768,
                 hub_id: str | None = "openai/clip-vit-large-patch14", allow_download: bool = False) -> None:
        super().__init__()
        self.path, self.hub_id, self.allow_download = path, hub_id, allow_download
        self.max_length, self.use_mask, self.dim = max_length, use_mask, dim
        self.model: nn.Module | None = None
        if path and Path(path).expanduser().is_dir():
            self.load()
        # else: loaded (or a clear UserError raised) by load(), which LatentDiffusion.setup calls before training

    def load(self) -> "CLIPTextEncoder":
        if self.model is not None:
            return self
        where = resolve_pretrained(self.path, "CLIP text encoder", self.hub_id, self.allow_download)
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as e:
            raise UserError("the CLIP text encoder needs the 'transformers' package: pip install transformers") from e
        root = Path(where)
        model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        try:
            self.hf_tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir) if root.is_dir() else where)
            self.model = CLIPTextModel.from_pretrained(str(model_dir) if root.is_dir() else where)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load a CLIP text encoder from {where}: {e}") from e
        self.model.eval().requires_grad_(False)
        if int(self.model.config.hidden_size) != self.dim:
            raise UserError(f"the CLIP text encoder at {where} gives {self.model.config.hidden_size}-d features but "
                            f"the config says dim={self.dim} (net.context_dim); make them agree")
        return self

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        self.load()
        enc = self.hf_tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        device = device if device is not None else next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

    def train(self, mode: bool = True) -> "CLIPTextEncoder":
        super().train(mode)
        if self.model is not None:
            self.model.eval()  # always frozen
        return self

    @torch.no_grad()
    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        self.load()
        return self.model(input_ids=ids, attention_mask=mask.long() if self.use_mask else None).last_hidden_state


class TextConditionedNet(nn.Module):
    """``net(x, t, y=None, tokens=None, token_mask=None, context=None, context_mask=None)``.

    With ``tokens`` the (trainable) text encoder computes the cross-attention context inside the
    denoiser; a precomputed ``context`` (frozen encoders) passes straight through.
    """

    def __init__(self, denoiser: nn.Module, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.denoiser, self.text_encoder = denoiser, text_encoder

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, tokens: Tensor | None = None,
                token_mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        if tokens is not None:
            if self.text_encoder is None:
                raise ValueError("tokens were given but this network has no text encoder")
            context, context_mask = self.text_encoder(tokens, token_mask), token_mask
        kwargs = {"context": context, "context_mask": context_mask}
        if y is not None:
            kwargs["y"] = y
        return self.denoiser(x, t, **kwargs)
