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
from omegaconf import DictConfig, OmegaConf

from kakusan.errors import UserError
from kakusan.manifest import write_manifest
from kakusan.run import (check_shapes, hydra_overrides, instantiate_group, metric_value, resolved_config,
                         seed_everything, set_torch_threads, sweep_group, task_wrapper)
from kakusan.summary import update_summary
from kakusan.wandb_setup import configure_wandb_env

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


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    seed = seed_everything(cfg.get("seed"))
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.train")

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
    loggers = instantiate_group(cfg.get("logger"), **logger_kwargs)
    callbacks = instantiate_group(cfg.get("callbacks"), run_metadata={"run_config": resolved_config(cfg), "_recursive_": False})
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved_config(cfg))

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("test", False):
        ckpt = "best" if cfg.get("train", True) and trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)

    summary = update_summary(run_dir, {"status": "finished", "seed": seed})
    log.info("run folder: %s", run_dir)
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    metrics = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
