"""Store the resolved config and the W&B run id inside every checkpoint.

A checkpoint is then self-describing: ``experiments.sample`` and ``experiments.evaluate`` rebuild
the module from it, and a resumed run re-attaches to the same W&B run.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger


class RunMetadata(pl.Callback):
    def __init__(self, run_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        # built with _recursive_=False so nested _target_ entries stay plain config, not objects
        self.config = OmegaConf.to_container(run_config) if isinstance(run_config, DictConfig) else run_config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        meta: dict[str, Any] = {"config": self.config}
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                meta["wandb_run_id"] = lg.version
        checkpoint["kakusan"] = meta
