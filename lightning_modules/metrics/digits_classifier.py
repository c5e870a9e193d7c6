"""A small MNIST digit classifier: class accuracy of samples and the features of ``fid_digits``.

``fid_digits`` is a Fréchet distance in the 128-d penultimate features of this network, trained by
the framework on the MNIST-5k train split (``experiment=digits_classifier``). It is a cheap,
domain-specific "FID-like" score for digits: it runs in seconds on a CPU, but its values are not
comparable with Inception FID (``fid_inception``) or with any number from another paper.

Retrain and export::

    python -m experiments.train experiment=digits_classifier
    python -m lightning_modules.metrics.digits_classifier export <run>/checkpoints/last.ckpt
"""
from __future__ import annotations

import argparse
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kakusan.errors import UserError
from kakusan.weights import resolve_weights

FEATURE_DIM = 128
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"


class DigitsNet(nn.Module):
    """Three conv blocks (1x32x32 -> 128x4x4), 2x2 average pool, a 128-d feature layer, 10 logits."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), feature_dim: int = FEATURE_DIM,
                 num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(c3 * 4, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(prepare_digits(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def prepare_digits(x: Tensor) -> Tensor:
    """Check and bring digits to ``(B,1,32,32)`` in [-1,1]: 28x28 is padded with background (-1)."""
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) not in ((28, 28), (32, 32)):
        raise UserError(f"the digits classifier takes MNIST-style images (B,1,32,32) or (B,1,28,28) in [-1,1]; "
                        f"got shape {tuple(x.shape)}. Use extractor=inception for other data.")
    x = x.float()
    if x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x


_CACHE: dict[tuple[str, str], DigitsNet] = {}
_LOCK = threading.Lock()


def load_digits_classifier(path: str | Path | None = None, device: str | torch.device | None = None) -> DigitsNet:
    """The trained classifier (weights through the resolver), in eval mode, cached per file and device."""
    file = resolve_weights(path or "mnist_classifier")
    dev = torch.device(device or "cpu")
    key = (str(file), str(dev))
    with _LOCK:
        if key not in _CACHE:
            state = torch.load(file, map_location="cpu", weights_only=True)
            # build without touching the global RNG: the first load in a process must not shift the
            # training noise of the run that loads it (every weight is overwritten just below)
            with torch.random.fork_rng(devices=[]):
                net = DigitsNet(**state.get("config", {}))
            net.load_state_dict({k: v.float() for k, v in state["state_dict"].items()})
            _CACHE[key] = net.to(dev).eval().requires_grad_(False)
        return _CACHE[key]


@torch.no_grad()
def _batched(fn, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    return torch.cat([fn(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def digits_features(images: Tensor, batch_size: int = 512, device: str | torch.device | None = None) -> Tensor:
    """128-d penultimate features ``(N, 128)`` (float32, CPU) of MNIST-style images in [-1,1]."""
    net = load_digits_classifier(device=device)
    prepare_digits(images[:1])
    return _batched(net.features, images, batch_size, next(net.parameters()).device)


def predict_digits(images: Tensor, batch_size: int = 512, device: str | torch.device | None = None) -> Tensor:
    net = load_digits_classifier(device=device)
    prepare_digits(images[:1])
    return _batched(net, images, batch_size, next(net.parameters()).device).argmax(1)


def class_accuracy(images: Tensor, labels: Tensor, batch_size: int = 512,
                   device: str | torch.device | None = None) -> float:
    """Fraction of ``images`` (MNIST-style, [-1,1]) that the classifier labels as ``labels``."""
    if len(images) != len(labels):
        raise UserError(f"class_accuracy got {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UserError("class_accuracy needs at least one image")
    pred = predict_digits(images, batch_size, device)
    return float((pred == labels.cpu().long()).float().mean())


def export_weights(ckpt_path: str | Path, out: str | Path = WEIGHTS_FILE) -> Path:
    """Write the weights of a trained ``ClassifierModule`` checkpoint as a small fp16 state dict."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = {k[len("net."):]: v.half() for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    from omegaconf import DictConfig, OmegaConf

    run_cfg = (ckpt.get("kakusan") or {}).get("config") or {}
    run_cfg = OmegaConf.to_container(run_cfg) if isinstance(run_cfg, DictConfig) else run_cfg
    model_cfg = run_cfg.get("model") if isinstance(run_cfg, dict) else None
    net_cfg = model_cfg.get("net") if isinstance(model_cfg, dict) else None
    net_cfg = net_cfg if isinstance(net_cfg, dict) else {}    # else: DigitsNet defaults (checked just below)
    config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in net_cfg.items() if not k.startswith("_")}
    DigitsNet(**config).load_state_dict({k: v.float() for k, v in sd.items()})  # fails loudly on mismatch
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "config": config, "source": str(ckpt_path)}, out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="export a ClassifierModule checkpoint to the shipped weights file")
    ex.add_argument("ckpt")
    ex.add_argument("--out", default=str(WEIGHTS_FILE))
    ev = sub.add_parser("accuracy", help="accuracy on the MNIST-5k validation split")
    args = ap.parse_args(argv)
    if args.cmd == "export":
        print(export_weights(args.ckpt, args.out))
    else:
        from datamodules.mnist import MNISTDataModule

        dm = MNISTDataModule(conditional=True)
        dm.setup()
        x = torch.stack([dm.val_set[i]["x"] for i in range(len(dm.val_set))])
        y = torch.stack([dm.val_set[i]["y"] for i in range(len(dm.val_set))])
        print(f"val accuracy: {class_accuracy(x, y):.4f} on {len(x)} images")


if __name__ == "__main__":
    main()
