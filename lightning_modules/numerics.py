"""Non-finite losses and gradients: a clear error that names the step and keeps the batch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from kakusan.checkpoint_io import atomic_torch_save
from kakusan.errors import UserError

NONFINITE_POLICIES = ("stop", "skip", "ignore")


class NonFiniteError(UserError):
    """Training produced NaN or Inf."""


def nonfinite_error(module: pl.LightningModule, what: str, batch: Any, batch_idx: int) -> NonFiniteError:
    trainer = module.trainer
    step, epoch = trainer.global_step, trainer.current_epoch
    where = ""
    if batch is not None:
        path = Path(trainer.default_root_dir) / "faults" / f"step_{step:07d}_batch.pt"
        atomic_torch_save({"batch": batch, "global_step": step, "epoch": epoch, "batch_idx": batch_idx}, path)
        where = f" The offending batch was written to {path}."
    return NonFiniteError(
        f"non-finite {what} at global step {step} (epoch {epoch}, batch {batch_idx}).{where} Checkpoints written so far "
        f"are kept. Lower the learning rate, enable gradient clipping, check the data, or set model.nonfinite=skip "
        f"to drop such steps.")
