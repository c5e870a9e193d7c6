"""Draw samples with the EMA weights through training and save them as pictures (PNG + W&B)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from kakusan.images import save_grid, scatter_png

log = logging.getLogger(__name__)


class SampleLogger(pl.Callback):
    """Every ``every_n_epochs`` epochs and at the end of training, sample ``num_samples`` items with a
    fixed ``seed`` (the same noise each time, so grids show progress, not luck) and write
    ``samples/epoch_XXX.png`` plus ``samples/final.png``; log them to W&B when it is a logger.

    ``sampler`` overrides the module's sampler (e.g. fewer steps for quick previews);
    ``final_sampler`` the one used for the final grid.
    """

    def __init__(self, output_dir: str, every_n_epochs: int = 1, num_samples: int = 64, seed: int = 0,
                 sampler: Any = None, final_sampler: Any = None, scale: int = 2, on_train_end: bool = True) -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError("every_n_epochs must be >= 0 (0 = only at the end)")
        self.dir = Path(output_dir) / "samples"
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.sampler, self.final_sampler, self.scale, self.at_end = sampler, final_sampler, scale, on_train_end
        self.last_path: Path | None = None

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, sampler: Any) -> Path:
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = pl_module.sample(self.num_samples, sampler=sampler, generator=gen)
        path = self.dir / f"{name}.png"
        if x.ndim == 4:
            nrow = getattr(pl_module, "num_classes", None) or None
            save_grid(x, path, nrow=nrow if nrow and self.num_samples % nrow == 0 else None, scale=self.scale)
        elif x.ndim == 2 and x.shape[1] == 2:
            ref = None
            dm = trainer.datamodule
            if dm is not None and hasattr(dm, "real_samples"):
                ref = dm.real_samples(2000)
            scatter_png(x, path, reference=ref, title=f"{name} (step {trainer.global_step})")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(x.cpu(), path.with_suffix(".pt"))
            return path.with_suffix(".pt")
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(key="samples", images=[str(path)], caption=[name], step=trainer.global_step)
        self.last_path = path
        log.info("saved samples to %s", path)
        return path

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}", self.sampler)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and not getattr(trainer, "kakusan_preempted", False):
            self._draw(trainer, pl_module, "final", self.final_sampler or self.sampler)
