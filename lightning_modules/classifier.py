"""An image classifier as a LightningModule (used to train the digits classifier behind ``fid_digits``)."""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.base import DataError

from .optim import build_optimizers


def random_shift(x: Tensor, max_shift: int, background: float = -1.0) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (pad with background, random crop)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=background)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
    idx_b = torch.arange(b, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx_b, idx_c, rows, cols]


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classification of ``batch["x"]`` into ``batch["y"]`` with shift augmentation.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (``test/*`` on test).
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 lr_scheduler: Callable[..., Any] | None = None, max_shift: int = 2,
                 label_smoothing: float = 0.0, data_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler"], logger=False)
        self.net = net
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.max_shift, self.label_smoothing = max_shift, label_smoothing
        self.data_shape = tuple(data_shape) if data_shape is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: dict[str, Any], stage: str, augment: bool) -> Tensor:
        if batch.get("y") is None:
            raise DataError("the classifier needs labels: set data.conditional=true")
        x, y = batch["x"], batch["y"].long()
        if augment:
            x = random_shift(x, self.max_shift)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if augment else 0.0)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=not on_step,
                 batch_size=len(x))
        self.log(f"{stage}/acc", acc, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train", augment=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val", augment=False)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "test", augment=False)

    def configure_optimizers(self) -> Any:
        return build_optimizers(self, self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
