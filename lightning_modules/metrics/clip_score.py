"""CLIP score (Hessel et al. 2021, as torchmetrics reports it): ``100 * mean(max(cos(E_img, E_txt), 0))``.

The CLIP model comes from open_clip (``pip install open-clip-torch``), chosen in config:

- ``model="ViT-B-32", pretrained="laion2b_s34b_b79k"``: an open_clip architecture and tag; the weights are
  looked up locally first (``<weights dir>/clip/<model>/<tag>/`` holding the checkpoint file), downloaded only
  where the network allows (never in tests), otherwise a :class:`UserError` says where to put them;
- ``pretrained=/path/to/open_clip_pytorch_model.bin``: an explicit checkpoint file for ``model``;
- ``model=/path/to/folder`` (or ``local-dir:/path``): a folder in open_clip's Hub layout
  (``open_clip_config.json`` + weights), e.g. a downloaded ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``.

Images ``(B,C,H,W)`` in [-1,1] (grey repeated to RGB) are resized (shorter side, bicubic, antialiased) and
centre-cropped to the model's input size, then normalised with the model's mean/std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from kakusan.errors import UserError
from kakusan.weights import downloads_allowed, weights_dirs

CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                    "pytorch_model.bin")


def _open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise UserError("CLIP score needs open_clip: pip install 'open-clip-torch>=2.24'") from e
    return open_clip


def _checkpoint_in(folder: Path) -> Path | None:
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pt*")])
    return found[0] if found else None


class CLIPScorer:
    """An open_clip model + tokenizer + preprocessing; ``per_pair(images, texts)`` -> (B,) scores in [0, 100]."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: str | torch.device | None = None) -> None:
        self.model = model.to(device or "cpu").eval().requires_grad_(False)
        self.tokenizer = tokenizer
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pcfg.get("size", getattr(model.visual, "image_size", 224))
        self.size = size if isinstance(size, int) else int(size[0]) if len(set(size)) == 1 else tuple(size)
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.mean = torch.tensor(pcfg.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pcfg.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"CLIP score takes images (B,1|3,H,W) in [-1,1]; got shape {tuple(images.shape)}")
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        th, tw = (self.size, self.size) if isinstance(self.size, int) else self.size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def per_pair(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        if len(images) != len(texts):
            raise UserError(f"CLIP score got {len(images)} images but {len(texts)} prompts")
        dev = self.device
        img = self.model.encode_image(self.preprocess(images).to(dev)).float()
        txt = self.model.encode_text(self.tokenizer(list(texts)).to(dev)).float()
        cos = F.cosine_similarity(img, txt, dim=-1)
        return (100.0 * cos.clamp(min=0)).cpu()

    def score(self, images: Tensor, texts: Sequence[str]) -> float:
        return float(self.per_pair(images, texts).mean())


def load_clip(model: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
              cache_dir: str | Path | None = None, device: str | torch.device | None = None,
              allow_download: bool | None = None) -> CLIPScorer:
    """Build a :class:`CLIPScorer` with real weights, or raise a ``UserError`` saying where to put them."""
    open_clip = _open_clip()
    folder = Path(model[len("local-dir:"):] if model.startswith("local-dir:") else model).expanduser()
    if folder.is_dir():
        if _checkpoint_in(folder) is None:
            raise UserError(f"CLIP folder {folder} holds no weights file ({', '.join(CHECKPOINT_NAMES[:3])}, ...)")
        name = f"local-dir:{folder}"
        net = open_clip.create_model(name, device="cpu")
        return CLIPScorer(net, open_clip.get_tokenizer(name), device)
    if not pretrained:
        raise UserError(f"CLIP model '{model}' needs pretrained weights (a tag or a checkpoint file); random "
                        f"weights give meaningless scores")
    file = Path(str(pretrained)).expanduser()
    if not file.is_file():
        for d in weights_dirs(cache_dir):
            local = d / "clip" / model / str(pretrained)
            if local.is_dir() and _checkpoint_in(local) is not None:
                file = _checkpoint_in(local)
                break
    if file.is_file():
        net = open_clip.create_model(model, pretrained=str(file), device="cpu")
    elif downloads_allowed(allow_download):
        try:
            net = open_clip.create_model(model, pretrained=pretrained, device="cpu", require_pretrained=True,
                                         cache_dir=str(weights_dirs(cache_dir)[-1] / "open_clip"))
        except Exception as e:  # noqa: BLE001 - unknown tag or no network: say what to do
            raise UserError(f"could not get CLIP weights {model}/{pretrained} ({type(e).__name__}: {e}). "
                            f"{_where(model, pretrained, cache_dir)}") from e
    else:
        raise UserError(f"CLIP weights {model}/{pretrained} are not available locally and downloads are off. "
                        f"{_where(model, pretrained, cache_dir)}")
    return CLIPScorer(net, open_clip.get_tokenizer(model), device)


def _where(model: str, pretrained: str, cache_dir: str | Path | None) -> str:
    dirs = " or ".join(str(d / "clip" / model / pretrained) for d in weights_dirs(cache_dir))
    return (f"Put the open_clip checkpoint (e.g. open_clip_pytorch_model.bin from the Hugging Face repo of "
            f"{model}/{pretrained}) in {dirs}, or pass pretrained=<file>, or model=<folder with "
            f"open_clip_config.json and weights>.")


class CLIPScore(Metric):
    """Mean CLIP score over all ``update(images, texts)`` calls (sum + count states: DDP-safe)."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, scorer: CLIPScorer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scorer = scorer
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images: Tensor, texts: Sequence[str]) -> None:  # noqa: D102
        s = self.scorer.per_pair(images, texts).to(self.device, torch.float64)
        self.total += s.sum()
        self.count += s.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            raise UserError("CLIPScore.compute() called before any update()")
        return self.total / self.count
