"""Callbacks that make runs survive interruption: RNG state in checkpoints, pre-emption, fault injection."""
from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class RNGState(pl.Callback):
    """Save every RNG (torch CPU + CUDA, numpy, python) in checkpoints and restore it on resume, so
    the noise and timesteps drawn after a resume are the ones the uninterrupted run would draw."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # tensors and plain numbers only, so Lightning's weights_only=True resume can read them
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, py_state, gauss_next = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            log.warning("checkpoint has no RNG states: the resumed run will not be bit-exact")
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        n = states["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        py = states["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))


class Preempted(Exception):
    """Raised right after the pre-emption checkpoint is written, so that nothing else (epoch-end
    validation, epoch checkpoints) runs and overwrites it; the entry point exits cleanly."""


class Preemption(pl.Callback):
    """On SIGTERM or SIGUSR1 (how SLURM warns before pre-empting), finish the current step, write
    ``checkpoints/last.ckpt`` and stop cleanly; the entry point then exits with code 0 and status
    ``preempted``. Relaunching the same command with ``resume=auto`` continues from that step.
    Under DDP the decision is shared by all ranks so they save and stop together."""

    def __init__(self, dirpath: str, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        super().__init__()
        self.dirpath, self.signal_names = Path(dirpath), signals
        self.requested: str | None = None
        self.preempted = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name in self.signal_names:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        if stop and not self.preempted:
            self.preempted = True
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path)
            log.warning("received %s: saved %s at step %d and stopping; relaunch with resume=auto to continue",
                        self.requested or "a stop signal", path, trainer.global_step)
            trainer.kakusan_preempted = True  # read by the entry point and by end-of-training callbacks
            raise Preempted(f"stopped by {self.requested or 'a signal'} at step {trainer.global_step}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class FaultInjection(pl.Callback):
    """For fault-injection tests: real faults at chosen steps.

    - ``at_step``: deliver ``signal_name`` (e.g. ``SIGKILL``: no chance to save, resume uses the last
      step checkpoint; ``SIGTERM``: the pre-emption path) to this process after that many steps.
    - ``nan_batch_at_step``: put a NaN into the data of the batch trained at that step (a corrupt
      sample), exercising the ``model.nonfinite`` policy.
    """

    def __init__(self, at_step: int | None = None, signal_name: str = "SIGKILL",
                 nan_batch_at_step: int | None = None) -> None:
        super().__init__()
        self.at_step, self.signal_name, self.nan_batch_at_step = at_step, signal_name, nan_batch_at_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.nan_batch_at_step is not None and trainer.global_step == self.nan_batch_at_step:
            batch["x"].view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.at_step is not None and trainer.global_step == self.at_step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
