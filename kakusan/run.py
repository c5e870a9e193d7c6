"""Building a run from a Hydra config, and the task wrapper every entry point uses."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import ddp_launch
from .ddp_launch import global_rank
from .errors import UserError, user_error_of
from .run_folder import claim_run_folder, defer_log_files, holds_run, owns, release_run_folder
from .summary import update_summary
from .wandb_setup import finish_wandb

log = logging.getLogger("kakusan")


def hydra_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def sweep_group() -> str | None:
    """A name shared by every job of one multirun (its sweep folder), for grouping W&B runs."""
    if not is_multirun():
        return None
    hc = HydraConfig.get()
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}"


def job_number() -> int | None:
    """The job's index in its multirun (``hydra.job.num``), ``None`` outside a multirun."""
    if not is_multirun():
        return None
    num = HydraConfig.get().job.get("num")
    return int(num) if num is not None else None


def prepare_config(cfg: DictConfig) -> DictConfig:
    """Normalise a composed config in place before a task runs.

    - ``logger``/``callbacks`` entries set to ``null`` (debug configs switch W&B off that way) are
      removed, so code can test ``"wandb" in cfg.logger`` safely.
    - In a multirun every job gets its own W&B run, grouped by sweep: ``logger.wandb.group`` is set to
      :func:`sweep_group` (unless given), the tags gain ``sweep`` and the group name, and the run name
      gains the job number (``train-3``), so the runs of one sweep are told apart in the W&B table.
    """
    with open_dict(cfg):
        for key in ("logger", "callbacks"):
            group = cfg.get(key)
            if isinstance(group, DictConfig):
                for name in [n for n, v in group.items_ex(resolve=False) if v is None]:
                    del group[name]
        wandb_cfg = (cfg.get("logger") or {}).get("wandb")
        group = sweep_group()
        if group and isinstance(wandb_cfg, DictConfig):
            if not wandb_cfg.get("group"):
                wandb_cfg.group = group
            tags = list(wandb_cfg.get("tags") or [])
            wandb_cfg.tags = tags + [t for t in ("sweep", group) if t not in tags]
            num = job_number()
            if num is not None and wandb_cfg.get("name"):
                wandb_cfg.name = f"{wandb_cfg.name}-{num}"
    return cfg


def check_seed(seed: Any) -> int | None:
    """``seed`` as an int (``0`` is a seed like any other), ``None`` for "do not seed"; else a user error."""
    if seed is None:
        return None
    try:
        value = int(seed)
        if (isinstance(seed, float) and value != seed) or isinstance(seed, bool) or not 0 <= value < 2**32:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"seed must be a whole number in [0, 2**32) (0 is a seed like any other) or null for "
                        f"no seeding, got {seed!r}") from None
    return value


def seed_everything(seed: Any) -> int | None:
    """Seed every RNG. ``seed: 0`` is a seed like any other; only ``null`` means "do not seed"."""
    value = check_seed(seed)
    if value is None:
        return None
    return pl.seed_everything(value, workers=True, verbose=False)


def instantiate_group(cfg: DictConfig | None, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers) that has a ``_target_``."""
    out = []
    if not cfg:
        return out
    for name, sub in cfg.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(hydra.utils.instantiate(sub, **kwargs.get(name, {})))
    return out


def check_shapes(datamodule: Any, model: Any) -> None:
    """Fail early when the data and the model disagree on the shape of one item."""
    data_shape = getattr(datamodule, "data_shape", None)
    model_shape = getattr(model, "data_shape", None) or getattr(model, "sample_shape", None)
    if hasattr(model, "input_shape"):
        model_shape = model.input_shape
    if data_shape is None or model_shape is None:
        return
    if tuple(data_shape) != tuple(model_shape):
        raise UserError(
            f"the data gives items of shape {tuple(data_shape)} but the model expects {tuple(model_shape)}. "
            f"Make data.image_size / channels and model.sample_shape (and the network's in_channels and "
            f"image_size) agree, e.g. pick a matching experiment= config.")


def task_wrapper(task: Callable[[DictConfig], dict[str, Any]] | None = None, *,
                 claim: bool = True) -> Any:
    """Run ``task`` so that W&B is always closed and failures are recorded, never hidden.

    - The run folder is claimed first (:func:`kakusan.run_folder.claim_run_folder`: an existing run's
      folder is refused, a lock keeps a second process out). ``claim=False`` leaves that to the task
      (training claims after deciding whether it resumes, and after every component was built).
    - A failure writes ``failure.json`` (message and traceback) into the run folder and closes W&B
      with a failing exit code; the original exception is never replaced by a cleanup error. Only a
      folder this process owns, or one it created, is written: a refused command leaves an existing
      run untouched.
    - In a multirun the failure is recorded and the sweep goes on with the next job.
    - A user mistake (bad config, missing data) prints one paragraph and exits with code 2.
    - Under DDP, the processes Lightning starts for ranks > 0 stay in this job's run folder
      (:mod:`kakusan.ddp_launch`); a failure there is written to ``failure_rank<N>.json``.
    """

    def decorate(fn: Callable[[DictConfig], dict[str, Any]]) -> Callable[[DictConfig], dict[str, Any]]:
        @functools.wraps(fn)
        def wrapped(cfg: DictConfig) -> dict[str, Any]:
            ddp_launch.install()
            prepare_config(cfg)
            run_dir = Path(cfg.paths.output_dir)
            fresh = not holds_run(run_dir)
            if not fresh:
                defer_log_files(run_dir)
            try:
                if claim:
                    claim_run_folder(run_dir, cfg)
                metrics = fn(cfg)
            except Exception as exc:  # noqa: BLE001
                record_failure(exc, Path(cfg.paths.output_dir), run_dir if fresh else None)
                finish_wandb(exit_code=1)
                release_run_folder()
                if is_multirun():
                    log.error("job failed: %s", exc)
                    return {"status": "failed"}
                mistake = user_error_of(exc)
                if mistake is not None:
                    print(f"\nerror: {mistake}\n", file=sys.stderr)
                    sys.exit(2)
                raise
            finish_wandb(exit_code=0)
            release_run_folder()
            return metrics

        return wrapped

    return decorate(task) if task is not None else decorate


def record_failure(exc: BaseException, current: Path, fresh: Path | None) -> None:
    """``failure.json`` and ``status: failed`` in the run folder this process owns (``current``, where a
    resume may have moved the run), else in the folder it created (``fresh``); nowhere otherwise."""
    rank = global_rank()
    target = current if owns(current) or rank != 0 else fresh  # ranks > 0 share rank 0's folder
    if target is None:
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
        name = "failure.json" if rank == 0 else f"failure_rank{rank}.json"
        (target / name).write_text(json.dumps(
            {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), "rank": rank}, indent=2))
        if rank == 0:
            update_summary(target, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        log.error("failure recorded in %s/failure.json", target)
    except OSError:
        pass


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The objective for sweepers (e.g. Optuna): ``metrics[name]``, NaN when the job failed."""
    if not name:
        return None
    if name not in metrics:
        if metrics.get("status") == "failed":
            return math.nan
        raise UserError(f"optimized_metric '{name}' was not produced; available: {', '.join(sorted(metrics))}")
    return float(metrics[name])


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def set_torch_threads() -> None:
    """Respect an explicit thread count (``KAKUSAN_THREADS``) for reproducible CPU timings."""
    n = os.environ.get("KAKUSAN_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))
