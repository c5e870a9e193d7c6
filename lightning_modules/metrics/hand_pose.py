"""Pose fidelity of generated hands: a tiny keypoint regressor and the 2-D MPJPE in pixels.

:class:`HandKeypointRegressor` is a small CNN mapping a hand photo ``(B, 3, S, S)`` in [-1, 1] to
21 normalised ``(x, y)`` keypoints, trained by the framework on the real photos
(``python -m experiments.train experiment=hand_keypoint_regressor``, about a minute on a CPU).
Its targets are MediaPipe's pseudo-labels, so its error on real validation photos
(``val/mpjpe_px``) is the floor any generated image can reach; report both.
"""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim import build_optimizers

NUM_JOINTS = 21


class KeypointCNN(nn.Module):
    """Conv stack -> global average pool -> ``feature_dim`` features -> 42 sigmoid outputs."""

    def __init__(self, channels: tuple[int, ...] | list[int] = (32, 64, 128), feature_dim: int = 128,
                 in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1, stride=2),
                       nn.GroupNorm(8, out), nn.SiLU()]
            c = out
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Flatten(), nn.LazyLinear(feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, NUM_JOINTS * 2)
        self.feature_dim = feature_dim

    def embed(self, x: Tensor) -> Tensor:
        """``(B, feature_dim)`` features (also used for a cheap, hand-specific Fréchet distance)."""
        return self.features(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.head(self.embed(x))).reshape(-1, NUM_JOINTS, 2)


def mpjpe_px(pred: Tensor, target: Tensor, size: int | float) -> Tensor:
    """Mean per-joint 2-D distance in pixels of normalised keypoints ``(B, 21, 2)``; NaN joints skipped."""
    d = (pred[..., :2] - target[..., :2]).norm(dim=-1) * size
    ok = torch.isfinite(d)
    return d[ok].mean() if ok.any() else torch.tensor(float("nan"))


class HandKeypointRegressor(pl.LightningModule):
    """Trains :class:`KeypointCNN` on ``batch["x"]`` -> ``batch["cond"]["keypoints"]`` (L1 loss).

    ``max_shift`` (pixels) augments by translating image and keypoints together.
    """

    def __init__(self, net: KeypointCNN, optimizer: Callable[..., torch.optim.Optimizer],
                 lr_scheduler: Callable | None = None, max_shift: int = 2,
                 data_shape: list[int] | tuple[int, ...] = (3, 32, 32)) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler"], logger=False)
        self.net, self.optimizer_factory, self.lr_scheduler_factory = net, optimizer, lr_scheduler
        self.max_shift, self.data_shape = max_shift, tuple(data_shape)
        with torch.no_grad():  # materialise the lazy layer so checkpoints load strictly
            self.net(torch.zeros(1, *self.data_shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shift(self, x: Tensor, kp: Tensor) -> tuple[Tensor, Tensor]:
        if self.max_shift <= 0:
            return x, kp
        s = self.max_shift
        dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,)))
        x = torch.roll(F.pad(x, (s, s, s, s), mode="replicate"), shifts=(dy, dx), dims=(2, 3))[..., s:-s, s:-s]
        kp = kp + torch.tensor([dx / x.shape[-1], dy / x.shape[-2]], device=kp.device)
        return x, kp

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor:
        x, kp = batch["x"], batch["cond"]["keypoints"][..., :2]
        if stage == "train":
            x, kp = self._shift(x, kp)
        pred = self.net(x)
        loss = F.l1_loss(pred, kp)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=stage == "train", batch_size=x.shape[0])
        self.log(f"{stage}/mpjpe_px", mpjpe_px(pred, kp, x.shape[-1]), on_epoch=True, on_step=False,
                 batch_size=x.shape[0], sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return build_optimizers(self, self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)


@torch.no_grad()
def predict_keypoints(model: nn.Module, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """``(keypoints (N, 21, 2), features (N, D))`` of images in [-1, 1] with a regressor or its net."""
    net = model.net if isinstance(model, HandKeypointRegressor) else model
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    kps, feats = [], []
    try:
        for s in range(0, len(images), batch_size):
            f = net.embed(images[s:s + batch_size].to(dev).float())
            feats.append(f.cpu())
            kps.append(torch.sigmoid(net.head(f)).reshape(-1, NUM_JOINTS, 2).cpu())
    finally:
        net.train(was)
    return torch.cat(kps), torch.cat(feats)
