"""Train a model: ``python -m experiments.train [experiment=NAME] [overrides]``.

With no arguments this is the main job: DDPM on 5000 real MNIST digits, on the CPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from kakusan.config_check import check_argv_or_exit
from kakusan.errors import UserError
from kakusan.manifest import write_manifest
from kakusan.resume import find_resumable_run, readable_checkpoint
from kakusan.run import (check_shapes, hydra_overrides, instantiate_group, metric_value, resolved_config,
                         seed_everything, set_torch_threads, sweep_group, task_wrapper)
from kakusan.summary import update_summary
from kakusan.wandb_setup import configure_wandb_env
from lightning_modules.callbacks.reliability import Preempted

log = logging.getLogger("kakusan.train")


def build(node: DictConfig, what: str) -> Any:
    """Instantiate a config node; a failure caused by bad settings becomes a one-paragraph user error."""
    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (ValueError, TypeError, KeyError, FileNotFoundError, UserError)):
            raise UserError(f"cannot build the {what} ({node.get('_target_', '?')}): {cause}") from e
        raise


def resolve_resume(cfg: DictConfig) -> tuple[str | None, dict[str, Any] | None]:
    """Apply ``resume`` (``auto``, a run folder or a checkpoint): may move the run into an earlier
    run's folder. Returns the checkpoint to resume from and its content."""
    resume = cfg.get("resume")
    if not resume:
        return cfg.get("ckpt_path"), None
    fresh_dir = Path(cfg.paths.output_dir)
    if resume == "auto":
        run = find_resumable_run(fresh_dir.parent, hydra_overrides(), exclude=fresh_dir)
        if run is None:
            log.info("resume=auto: no unfinished run with these overrides under %s; starting fresh", fresh_dir.parent)
            return cfg.get("ckpt_path"), None
    else:
        target = Path(str(resume))
        if not target.exists():
            raise UserError(f"resume={resume}: no such run folder or checkpoint")
        run = target.parent.parent if target.is_file() else target
    ckpt_path, ckpt, problems = readable_checkpoint(run) if not Path(str(resume)).is_file() else (Path(str(resume)), None, [])
    if ckpt_path is None:
        raise UserError(f"resume: no readable checkpoint in {run}/checkpoints. " + " ".join(problems))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)  # continue writing into the interrupted run's folder
    if fresh_dir != run:
        fresh_dir.mkdir(parents=True, exist_ok=True)
        (fresh_dir / "resumed_into.txt").write_text(f"{run}\n")
    log.info("resuming %s from %s", run, ckpt_path)
    return str(ckpt_path), ckpt


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    ckpt_path, ckpt = resolve_resume(cfg)
    run_dir = Path(cfg.paths.output_dir)
    seed = seed_everything(cfg.get("seed"))
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.train",
                   resumed_from=ckpt_path if cfg.get("resume") else None)

    log.info("data: %s", cfg.data._target_)
    datamodule: pl.LightningDataModule = build(cfg.data, "datamodule")
    datamodule.setup("fit")
    log.info("model: %s", cfg.model._target_)
    model: pl.LightningModule = build(cfg.model, "model")
    check_shapes(datamodule, model)

    if "wandb" in (cfg.get("logger") or {}):
        configure_wandb_env()
    logger_kwargs: dict[str, Any] = {}
    group = sweep_group()
    if group and "wandb" in (cfg.get("logger") or {}) and not cfg.logger.wandb.get("group"):
        logger_kwargs["wandb"] = {"group": group}
    wandb_id = ((ckpt or {}).get("kakusan") or {}).get("wandb_run_id")
    if wandb_id and "wandb" in (cfg.get("logger") or {}):
        logger_kwargs.setdefault("wandb", {}).update({"id": wandb_id, "resume": "allow"})  # same W&B run
    loggers = instantiate_group(cfg.get("logger"), **logger_kwargs)
    callbacks = instantiate_group(cfg.get("callbacks"), run_metadata={"run_config": resolved_config(cfg), "_recursive_": False})
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved_config(cfg))

    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except Preempted:
            pass  # the checkpoint is written; report below and exit with code 0
    if getattr(trainer, "kakusan_preempted", False):
        log.warning("stopped by a signal; checkpoint saved. Relaunch the same command with resume=auto.")
        return update_summary(run_dir, {"status": "preempted", "global_step": trainer.global_step, "seed": seed})
    if cfg.get("test", False):
        ckpt = "best" if cfg.get("train", True) and trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)

    final = {"status": "finished", "seed": seed}
    summary = update_summary(run_dir, final) if trainer.is_global_zero else final  # rank 0 writes
    log.info("run folder: %s", run_dir)
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    metrics = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    check_argv_or_exit("train")
    main()
