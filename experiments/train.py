"""Train a model: ``python -m experiments.train [experiment=NAME] [overrides]``.

With no arguments this is the main job: DDPM on 5000 real MNIST digits, on the CPU.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from kakusan.checkpoint import read_checkpoint
from kakusan.config_check import check_argv_or_exit
from kakusan.errors import UserError
from kakusan.manifest import write_manifest
from kakusan.resume import find_resumable_run, readable_checkpoint, same_overrides
from kakusan.run import (check_seed, check_shapes, hydra_overrides, instantiate_group, metric_value, resolved_config,
                         seed_everything, set_torch_threads, sweep_group, task_wrapper)
from kakusan.run_folder import (RunFolderConflict, check_not_taken, check_unlocked, claim_run_folder, describe_run,
                                holds_run)
from kakusan.summary import read_summary, update_summary
from kakusan.wandb_setup import configure_wandb_env
from lightning_modules.callbacks.reliability import Preempted

log = logging.getLogger("kakusan.train")


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Instantiate a config node; a failure caused by bad settings becomes a one-paragraph user error."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (ValueError, TypeError, KeyError, FileNotFoundError, UserError,
                              MisconfigurationException)):
            raise UserError(f"cannot build the {what} ({node.get('_target_', '?')}): {cause}") from e
        raise


def how_to_continue(run_dir: Path) -> str:
    return (f"To continue it, add resume={run_dir} to your command (or resume=auto to the command that "
            f"started it).")


@dataclass
class Plan:
    """Where a training run writes and what it continues from (decided before anything is written)."""

    run_dir: Path
    ckpt_path: str | None = None
    ckpt: dict[str, Any] | None = None
    resuming: bool = False
    finished: bool = False


def run_dir_chosen_by_user() -> bool:
    """Whether the command fixed its run folder (``hydra.run.dir`` / ``hydra.sweep.dir``)."""
    try:
        given = HydraConfig.get().overrides.hydra
    except ValueError:
        return False
    return any(o.lstrip("+~").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for o in given)


def plan_run(cfg: DictConfig) -> Plan:
    """Apply ``resume`` (``auto``, a run folder or a checkpoint) and check ``ckpt_path``; writes nothing.

    ``resume=auto`` continues, in order: the run already in this command's own folder (a fixed
    ``hydra.run.dir``, a SLURM array task's folder, a multirun job of a fixed ``hydra.sweep.dir``) when
    it was started with the same overrides; else, for timestamped folders, the newest unfinished
    sibling run with the same overrides; else it starts fresh.
    """
    out = Path(cfg.paths.output_dir)
    resume = cfg.get("resume")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        read_checkpoint(ckpt_path)  # a missing or corrupt file is reported now, naming it
    if not resume:
        check_not_taken(out, how_to_continue(out))
        return Plan(out, ckpt_path)
    if resume == "auto":
        if holds_run(out):
            if not same_overrides(out, hydra_overrides()):
                raise RunFolderConflict(
                    f"resume=auto: {out} holds a run started with other overrides ({describe_run(out)}); nothing "
                    f"in it was changed. Continue it with the overrides it was started with, or choose another "
                    f"hydra.run.dir for this command.")
            if read_summary(out).get("status") == "finished":
                return Plan(out, finished=True)
            check_unlocked(out)
            run = out
        elif run_dir_chosen_by_user():
            return Plan(out, ckpt_path)
        else:
            run = find_resumable_run(out.parent, hydra_overrides(), exclude=out)
            if run is None:
                log.info("resume=auto: no unfinished run with these overrides under %s; starting fresh", out.parent)
                return Plan(out, ckpt_path)
            check_unlocked(run)
    else:
        target = Path(str(resume))
        if not target.exists():
            raise UserError(f"resume={resume}: no such run folder or checkpoint")
        if target.is_file():
            ckpt = read_checkpoint(target)  # a corrupt file is named now, before anything is recorded
            run = target.parent.parent
            if target.parent.name != "checkpoints" or not holds_run(run):
                raise UserError(f"resume={target}: this checkpoint is not inside a run folder (<run>/checkpoints/), "
                                f"so there is no run to continue; to start a new run from its weights, use "
                                f"ckpt_path={target}")
            check_unlocked(run)
            return Plan(run, str(target), ckpt, resuming=True)
        run = target
        check_unlocked(run)
    found, ckpt, problems = readable_checkpoint(run)
    if found is None:
        raise UserError(f"resume: no readable checkpoint in {run}/checkpoints. " + " ".join(problems))
    return Plan(run, str(found), ckpt, resuming=True)


@task_wrapper(claim=False)
def train(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    seed = check_seed(cfg.get("seed"))
    fresh_dir = Path(cfg.paths.output_dir)
    plan = plan_run(cfg)
    if plan.finished:
        print(f"resume=auto: the run in {plan.run_dir} has finished; nothing to do", file=sys.stderr)
        return read_summary(plan.run_dir)
    run_dir = plan.run_dir
    if run_dir != fresh_dir:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)  # a resumed run writes into its own folder
    seed_everything(seed)

    # Build every component before the run folder is claimed: bad settings stop here, and nothing
    # has been written into an existing run.
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
    meta = (plan.ckpt or {}).get("kakusan") or {}
    if meta.get("wandb_run_id") and "wandb" in (cfg.get("logger") or {}):
        logger_kwargs.setdefault("wandb", {}).update({"id": meta["wandb_run_id"], "resume": "allow"})  # same W&B run
    if plan.ckpt is not None and "csv" in (cfg.get("logger") or {}):
        logger_kwargs["csv"] = {"resume_step": int(plan.ckpt.get("global_step", 0))}  # keep the rows before it
    loggers = instantiate_group(cfg.get("logger"), **logger_kwargs)
    callbacks = instantiate_group(cfg.get("callbacks"), run_metadata={"run_config": resolved_config(cfg), "_recursive_": False})
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    claim_run_folder(run_dir, cfg, resuming=plan.resuming, how_to_continue=how_to_continue(run_dir))
    if plan.resuming and fresh_dir != run_dir and not holds_run(fresh_dir):
        fresh_dir.mkdir(parents=True, exist_ok=True)
        (fresh_dir / "resumed_into.txt").write_text(f"{run_dir}\n")
    if plan.resuming:
        log.info("resuming %s from %s", run_dir, plan.ckpt_path)
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.train",
                   resumed_from=plan.ckpt_path if plan.resuming else None)
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved_config(cfg))

    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=plan.ckpt_path)
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
