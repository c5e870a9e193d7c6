"""Write the run's final numbers into ``summary.json`` (and every logger's summary)."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from kakusan.summary import update_summary


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out = {}
    for k, v in trainer.callback_metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class SummaryWriter(pl.Callback):
    """After fit and after test, merge the latest logged scalars into ``summary.json``.

    Keys are renamed for readers: ``train/loss_epoch`` -> ``train/loss`` (the last epoch's mean).
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = output_dir

    def _write(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:
        metrics = scalar_metrics(trainer)
        clean = {}
        for k, v in metrics.items():
            if k.endswith("_step"):
                continue
            clean[k[: -len("_epoch")] if k.endswith("_epoch") else k] = v
        clean.update(extra)
        update_summary(self.output_dir, clean)
        for lg in trainer.loggers:
            exp = getattr(lg, "experiment", None)
            summary = getattr(exp, "summary", None)
            if summary is not None and hasattr(summary, "update"):
                summary.update(clean)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {"global_step": trainer.global_step, "epochs": trainer.current_epoch})

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {})
