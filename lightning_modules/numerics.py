"""Non-finite losses and gradients: a clear error that names the step and keeps the batch, or
skipped steps that are counted, logged, warned about and capped."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from kakusan.checkpoint_io import atomic_torch_save
from kakusan.errors import UserError

NONFINITE_POLICIES = ("stop", "skip", "ignore")
MIN_SKIPS_TO_STOP = 3  # a lone bad batch never stops a run, however early it comes

log = logging.getLogger(__name__)


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


class NonFiniteGuard:
    """The ``model.nonfinite`` policy, applied before every optimiser step (one device sync).

    - ``stop``: raise :class:`NonFiniteError` naming the step; the batch goes to ``<run>/faults/``.
    - ``skip``: drop the step (gradients cleared, so the optimiser leaves the weights alone), warn,
      log ``train/skipped_steps`` and keep the count in checkpoints; once more than ``max_skip_share``
      of the optimiser steps so far were skipped (and at least three), the run has diverged and
      stops with a :class:`NonFiniteError` that says so (``train/skipped_steps`` is in summary.json).
    - ``ignore``: no check.
    """

    def __init__(self, policy: str = "stop", max_skip_share: float = 0.1) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        if not 0.0 <= max_skip_share <= 1.0:
            raise ValueError(f"nonfinite_max_skip_share must lie in [0, 1], got {max_skip_share}")
        self.policy, self.max_skip_share = policy, max_skip_share
        self.skipped = 0

    def check(self, module: pl.LightningModule, net: nn.Module, loss: Tensor | None, batch: Any, batch_idx: int) -> None:
        if self.policy == "ignore":
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        values = [*torch._foreach_norm(grads)] + ([loss.float()] if loss is not None else [])
        finite = not values or bool(torch.isfinite(torch.stack(values)).all())
        if not finite:
            what = "loss" if loss is not None and not torch.isfinite(loss) else "gradient"
            if self.policy == "stop":
                raise nonfinite_error(module, what, batch, batch_idx)
            self._skip(module, net, what)
        if self.policy == "skip":
            module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def _skip(self, module: pl.LightningModule, net: nn.Module, what: str) -> None:
        for p in net.parameters():
            p.grad = None
        self.skipped += 1
        step = module.trainer.global_step
        attempted = step + 1
        log.warning("non-finite %s at global step %d: step skipped (%d of %d steps so far, model.nonfinite=skip)",
                    what, step, self.skipped, attempted)
        if self.skipped >= MIN_SKIPS_TO_STOP and self.skipped > self.max_skip_share * attempted:
            if module.trainer.is_global_zero:
                from kakusan.summary import update_summary

                update_summary(module.trainer.default_root_dir, {"train/skipped_steps": self.skipped})
            lr = [g["lr"] for opt in module.trainer.optimizers for g in opt.param_groups][:1]
            raise NonFiniteError(
                f"training diverged: {self.skipped} of the {attempted} optimiser steps so far had a non-finite "
                f"{what} and were skipped (model.nonfinite=skip stops above a share of "
                f"{self.max_skip_share:g}, model.nonfinite_max_skip_share). Skipping cannot repair weights that "
                f"have already blown up: lower the learning rate{f' (now {lr[0]:g})' if lr else ''}, enable "
                f"gradient clipping or check the data. Checkpoints written so far are kept.")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))
