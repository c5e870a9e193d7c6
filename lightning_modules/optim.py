"""Learning-rate schedules that Hydra can build as ``_partial_`` configs."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``
    (constant after warm-up when ``total_steps`` is ``None``)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not total_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def total_training_steps(trainer: pl.Trainer) -> int:
    """Optimiser steps of the whole run, computed without ``trainer.estimated_stepping_batches``
    (which builds and starts the train loader before a resumed run restores its position)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    n = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    n = min(n, int(limit)) if isinstance(limit, int) else int(n * limit)
    return max(1, math.ceil(n / trainer.accumulate_grad_batches) * max(1, trainer.max_epochs or 1))


def build_optimizers(module: pl.LightningModule, params: Iterable[Any], optimizer_factory: Callable[..., Optimizer],
                     lr_scheduler_factory: Callable[..., Any] | None) -> Any:
    """What ``configure_optimizers`` returns for ``_partial_`` optimiser / scheduler configs.

    A scheduler with ``total_steps: auto`` gets the run's optimiser-step count; it is stepped per step.
    """
    opt = optimizer_factory(params=params)
    if lr_scheduler_factory is None:
        return opt
    extra = {}
    if getattr(lr_scheduler_factory, "keywords", {}).get("total_steps") == "auto":
        extra["total_steps"] = total_training_steps(module.trainer)  # the whole run
    sched = lr_scheduler_factory(optimizer=opt, **extra)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
