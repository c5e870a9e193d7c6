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


class EpochMetricState(pl.Callback):
    """Keep epoch-level logged values (``self.log(..., on_epoch=True)``: ``train/loss_epoch``) exact
    across a mid-epoch resume. Lightning restarts their running sums at zero, so after a resume the
    epoch mean covered only the batches since; here the sums go into every checkpoint and are added
    back once the first resumed batch has created the new ones."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _results(trainer: pl.Trainer) -> dict[str, Any]:
        return getattr(trainer.fit_loop.epoch_loop, "_results", None) or {}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        sums = {}
        for key, metric in self._results(trainer).items():
            if not getattr(metric, "is_tensor", False) or not metric.meta.on_epoch or metric.has_reset:
                continue
            entry = {"value": metric.value.detach().cpu().clone()}
            if metric.meta.is_mean_reduction:
                entry["count"] = metric.cumulated_batch_size.detach().cpu().clone()
            sums[key] = entry
        checkpoint["kakusan_epoch_metrics"] = {"epoch": trainer.current_epoch, "sums": sums}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get("kakusan_epoch_metrics")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        pending, self._pending = self._pending, None
        if not pending or pending["epoch"] != trainer.current_epoch:
            return  # nothing saved, or the checkpoint closed its epoch: a new epoch starts from zero
        results = self._results(trainer)
        for key, saved in pending["sums"].items():
            metric = results.get(key)
            if metric is None:
                continue
            value = saved["value"].to(metric.value.device)
            if metric.meta.is_mean_reduction:
                metric.value = metric.value + value
                metric.cumulated_batch_size = metric.cumulated_batch_size + saved["count"].to(metric.value.device)
            elif metric.meta.is_sum_reduction:
                metric.value = metric.value + value
            else:
                metric.value = metric.meta.reduce_fx(metric.value, value)


class Preempted(Exception):
    """Raised right after the pre-emption checkpoint is written, so that nothing else (epoch-end
    validation, epoch checkpoints) runs and overwrites it; the entry point exits cleanly."""


class Preemption(pl.Callback):
    """On SIGTERM or SIGUSR1 (how SLURM warns before pre-empting), finish the current step, write
    ``checkpoints/last.ckpt`` and stop cleanly; the entry point then exits with code 0 and status
    ``preempted``. Relaunching the same command with ``resume=auto`` continues from that step.
    Under DDP the decision is shared by all ranks so they save and stop together.

    The handler is installed twice: in ``setup``, before Lightning registers its signal handlers, so
    that it is the handler Lightning puts back when it tears down; and in ``on_train_start``, over
    Lightning's own (which would end the fit with ``SIGTERMException`` before anything is saved).
    Once a stop was requested, further signals (a scheduler that repeats SIGTERM, an impatient second
    kill) are noted and ignored: the process still finishes writing and exits with code 0.
    """

    def __init__(self, dirpath: str, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        super().__init__()
        self.dirpath, self.signal_names = Path(dirpath), signals
        self.requested: str | None = None
        self.preempted = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            log.warning("received %s again while stopping; ignored (the run saves its checkpoint and exits cleanly)", name)
            return
        self.requested = name

    def _install(self) -> None:
        for name in self.signal_names:
            sig = getattr(signal, name)
            previous = signal.signal(sig, self._handler)
            self._previous.setdefault(sig, previous)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

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
        if self.requested is not None:
            return  # stopping: keep ignoring repeated signals until the process exits
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class FaultInjection(pl.Callback):
    """For fault-injection tests: real faults at chosen steps.

    - ``at_step``: deliver ``signal_name`` (e.g. ``SIGKILL``: no chance to save, resume uses the last
      step checkpoint; ``SIGTERM``: the pre-emption path) to this process after that many steps.
    - ``repeat_signal``: deliver ``signal_name`` once more while the run shuts down, after Lightning
      has put back the signal handlers it found (a second SIGTERM during the first one's shutdown).
    - ``kill_in_checkpoint_write_at_step``: SIGKILL this process inside the checkpoint write of that
      step, after the temporary file is complete and before it replaces the checkpoint.
    - ``stall_at_step`` / ``stall_seconds``: sleep there (a long step), ending early on a stop signal.
    - ``nan_batch_at_step``: put a NaN into the data of the batch trained at that step (a corrupt
      sample), exercising the ``model.nonfinite`` policy.
    """

    def __init__(self, at_step: int | None = None, signal_name: str = "SIGKILL", repeat_signal: bool = False,
                 kill_in_checkpoint_write_at_step: int | None = None, stall_at_step: int | None = None,
                 stall_seconds: float = 60.0, nan_batch_at_step: int | None = None) -> None:
        super().__init__()
        self.at_step, self.signal_name, self.repeat_signal = at_step, signal_name, repeat_signal
        self.kill_in_write_at = kill_in_checkpoint_write_at_step
        self.stall_at_step, self.stall_seconds = stall_at_step, stall_seconds
        self.nan_batch_at_step = nan_batch_at_step

    def _signal(self) -> None:
        os.kill(os.getpid(), getattr(signal, self.signal_name))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.nan_batch_at_step is not None and trainer.global_step == self.nan_batch_at_step:
            batch["x"].view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.kill_in_write_at is not None and step == self.kill_in_write_at:
            # checkpoint callbacks run after this one: the next write of this step is killed half-way
            trainer.strategy.checkpoint_io.before_replace = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
        if self.stall_at_step is not None and step == self.stall_at_step:
            import time

            end = time.monotonic() + self.stall_seconds
            stop = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
            while time.monotonic() < end and not (stop is not None and stop.requested):
                time.sleep(0.05)
        if self.at_step is not None and step == self.at_step:
            self._signal()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not (self.repeat_signal and isinstance(exception, Preempted)):
            return
        connector = trainer._signal_connector
        restore = connector.teardown

        def teardown_then_signal() -> None:
            restore()
            self._signal()  # the handlers Lightning found are back: this is the shutdown window

        connector.teardown = teardown_then_signal
