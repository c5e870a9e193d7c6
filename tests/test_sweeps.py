"""Hydra multiruns on CPU: a W&B run per job, failing jobs, the W&B sweep file, the SLURM launcher config,
DDP children of a job and the parallel local launcher. (The README's grid and Optuna sweeps and their
reports run as written in test_readme_sweeps.py.)"""
from __future__ import annotations

import json
import runpy
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from experiments.report import main as report_main
from kakusan.wandb_setup import finish_wandb, read_offline_run

from .conftest import CONFIG_DIR, ROOT

TINY = ["debug=limit", "model.net.base_channels=8", "model.net.attention_resolutions=[]", "data.batch_size=16",
        "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.sample_logger.num_samples=4", "callbacks.sample_logger.sampler.steps=2", "sampler.steps=2"]
# Without debug= (which switches W&B off): the same tiny run with the default loggers (CSV + W&B offline).
TINY_WANDB = [t.replace("trainer.limit", "+trainer.limit") for t in TINY if t != "debug=limit"] + [
    "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.progress_bar=null",
    "trainer.accelerator=cpu", "callbacks.fid_digits.num_samples=32", "callbacks.fid_digits.batch_size=32",
    "callbacks.fid_digits.sampler.steps=4"]


pytestmark = pytest.mark.usefixtures("one_thread")


def multirun(args: list[str]) -> None:
    """``python -m experiments.train -m ARGS`` in this process (as __main__, so Hydra finds configs/)."""
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [str(ROOT / "experiments" / "train.py"), "-m", *args]
    try:
        runpy.run_module("experiments.train", run_name="__main__")
    except SystemExit as exc:  # Hydra exits 0 after a multirun on some code paths
        assert not exc.code, f"multirun exited with {exc.code}"
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


def test_multirun_wandb_run_per_job_and_failing_job_recorded(tmp_path, monkeypatch):
    """Each job is its own offline W&B run (unique id, sweep group, tags), closed with the job's exit code;
    a job that really fails (negative learning rate) is recorded and the sweep goes on."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "wb"
    multirun(["model.optimizer.lr=-1,1e-4", "seed=0", *TINY_WANDB, f"hydra.sweep.dir={sweep}"])
    finish_wandb()
    import wandb

    wandb.teardown()  # the W&B service flushes offline transaction logs when it stops
    failed, ok = sweep / "0", sweep / "1"
    assert json.loads((ok / "summary.json").read_text())["status"] == "finished"
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed" and "learning rate" in summary["error"].lower()
    assert "Traceback" in json.loads((failed / "failure.json").read_text())["traceback"]
    infos = []
    for job in (failed, ok):
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        infos.append(read_offline_run(runs[0]))
    assert infos[0]["run_id"] != infos[1]["run_id"]
    assert infos[0]["group"] == infos[1]["group"] == f"train-{sweep.name}"
    assert "sweep" in infos[0]["tags"] and "sweep" in infos[1]["tags"]
    assert infos[0]["exit_code"] == 1 and infos[1]["exit_code"] == 0
    assert report_main([str(sweep), "--no-plots"]) == 0  # the report lists the failure
    assert "Failed or incomplete runs (1)" in (sweep / "report" / "report.md").read_text()


def test_wandb_sweep_file_parameters_are_hydra_overrides(make_cfg):
    spec = yaml.safe_load((ROOT / "configs" / "wandb_sweep" / "mnist.yaml").read_text())
    assert spec["command"][-1] == "${args_no_hyphens}" and spec["command"][:4] == ["${env}", "python", "-m",
                                                                                 "experiments.train"]
    assert spec["metric"]["name"] == "val/loss"
    for name, param in spec["parameters"].items():
        for value in param["values"][:2]:
            cfg = make_cfg([f"{name}={value}"])  # what the agent passes: key=value
            assert OmegaConf.select(cfg, name) == value


def test_slurm_launcher_and_ddp_configs_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "trainer=ddp", "hydra.launcher.gpus_per_node=4",
                                          "hydra.launcher.nodes=2", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.tasks_per_node == 4 and launcher.timeout_min == 240
    assert OmegaConf.to_container(cfg.trainer)["devices"] == "${hydra:launcher.gpus_per_node}"
    assert cfg.trainer.strategy == "ddp"


def test_ddp_child_command_runs_the_job_not_the_sweep(monkeypatch, tmp_path):
    """In a multirun, DDP ranks > 0 must re-run this job alone, in this job's folder."""
    from hydra.core.hydra_config import HydraConfig

    from kakusan.ddp_launch import child_command

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["seed=1", "model.optimizer.lr=0.001"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "3")
    cfg.hydra.runtime.cwd = str(ROOT)
    cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.verbose=true"]
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "seed=0,1", "model.optimizer.lr=0.001", "-cn", "train"])
    cmd, cwd = child_command(1)
    assert cmd[0] == sys.executable
    assert "-m" not in cmd[2:] and "seed=0,1" not in cmd and "seed=1" in cmd and "hydra.verbose=true" in cmd
    assert ["-cn", "train"] == cmd[cmd.index("-cn"):cmd.index("-cn") + 2]
    assert f'hydra.run.dir="{tmp_path / "sweep" / "3"}"' in cmd and "hydra.mode=RUN" in cmd
    assert not any(c.startswith("hydra.sweep") for c in cmd) and cwd == str(ROOT)


def test_local_parallel_launcher_runs_jobs_as_separate_processes(tmp_path):
    sweep = tmp_path / "parallel"
    multirun(["launcher=local_parallel", "debug=fast_dev_run", "logger=csv", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    for i in (0, 1):
        summary = json.loads((sweep / str(i) / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["seed"] == i
    # submitit's local executor ran each job in its own process, with its own log folder
    logs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    assert len(logs) == 2 and all(list(p.glob("*_log.out")) for p in logs)
