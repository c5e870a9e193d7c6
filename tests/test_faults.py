"""Fault injection: SIGKILL + resume=auto is exact, SIGTERM pre-empts cleanly, corrupt checkpoints
fall back, writes are atomic, NaNs are caught, user mistakes give one paragraph and no traceback."""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.train import train
from kakusan.checkpoint_io import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.net.base_channels=8", "model.net.attention_resolutions=[]", "data.batch_size=16", "logger=csv",
        "debug=limit", "trainer.limit_train_batches=4", "trainer.max_epochs=2",
        "callbacks.step_checkpoint.every_n_train_steps=3", "callbacks.sample_logger=null"]


def cli(args, timeout=300, cwd=ROOT):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


INJECT = "+callbacks.fault_injection._target_=lightning_modules.callbacks.reliability.FaultInjection"


def only_run(log_dir: Path, task="ddpm_mnist") -> Path:  # debug runs keep their experiment's folder
    runs = [p for p in (log_dir / task / "runs").iterdir() if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    return runs[0]


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def assert_same_params(a: dict, b: dict):
    assert a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6, rtol=0), k


def csv_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def assert_same_log(ref: Path, run: Path):
    """The resumed run's CSV holds every row of the uninterrupted run's, once, and nothing else."""
    a, b = csv_rows(ref), csv_rows(run)
    assert len(b) == len(a) and sorted(map(str, b)) == sorted(map(str, a))
    train_steps = [r["step"] for r in b if r.get("train/loss_step")]
    assert len(train_steps) == len(set(train_steps)) == 8  # every optimiser step once


def test_sigkill_then_resume_auto_in_a_fixed_run_folder_is_exact(tmp_path):
    """SIGKILL at step 7 of a run in a fixed folder (hydra.run.dir, as SLURM array jobs use); the same
    command with resume=auto continues it in place from the step-6 checkpoint, ends bit-exact with an
    uninterrupted run and keeps one CSV row per step; the dead process's lock is taken over."""
    ref = cli(TINY + [f"hydra.run.dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "fixed"
    args = TINY + [f"hydra.run.dir={run}", "resume=auto"]
    killed = cli(args + [INJECT, "+callbacks.fault_injection.at_step=7"])
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(run / "checkpoints" / "step_0000006.ckpt", weights_only=False)["global_step"] == 6  # mid-epoch 1
    resumed = cli(args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert f"resuming {run} from {run / 'checkpoints' / 'step_0000006.ckpt'}" in said
    assert "took over the lock" in said and not (run / ".lock").exists()
    assert_same_params(final_state(tmp_path / "ref"), final_state(run))
    assert_same_log(tmp_path / "ref", run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1 and json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_sigkill_during_a_checkpoint_write_then_resume_auto_is_exact(tmp_path):
    """The 2-D MLP, timestamped run folders: SIGKILL inside the write of the step-6 checkpoint leaves its
    temporary file; resume=auto finds the run, removes the debris, resumes from the last good checkpoint
    and ends bit-exact, with the full CSV."""
    args = [a for a in TINY if not a.startswith(("model.net.base_channels", "model.net.attention"))]
    args += ["experiment=ddpm_toy2d", "data.batch_size=64"]
    ref = cli(args + [f"paths.log_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed_args = args + [f"paths.log_dir={tmp_path / 'run'}", "resume=auto"]
    killed = cli(killed_args + [INJECT, "+callbacks.fault_injection.kill_in_checkpoint_write_at_step=6"])
    assert killed.returncode == -signal.SIGKILL
    run = only_run(tmp_path / "run", "ddpm_toy2d")
    debris = list((run / "checkpoints").glob(".step_0000006.ckpt.tmp-*"))
    assert len(debris) == 1 and not (run / "checkpoints" / "step_0000006.ckpt").exists()
    resumed = cli(killed_args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path / "run", "ddpm_toy2d") == run  # continued in place, no second run folder
    assert "left by an interrupted write" in resumed.stdout + resumed.stderr and not debris[0].exists()
    assert_same_params(final_state(only_run(tmp_path / "ref", "ddpm_toy2d")), final_state(run))
    assert_same_log(only_run(tmp_path / "ref", "ddpm_toy2d"), run)


def test_sigterm_twice_saves_exits_zero_then_resumes(tmp_path):
    """SIGTERM at step 5, and a second SIGTERM after Lightning has put its signal handlers back: the
    checkpoint and `preempted` status are written and the process still exits 0; resume=auto finishes."""
    args = TINY + [f"paths.log_dir={tmp_path}", "resume=auto"]
    first = cli(args + [INJECT, "+callbacks.fault_injection.at_step=5", "+callbacks.fault_injection.signal_name=SIGTERM",
                        "+callbacks.fault_injection.repeat_signal=true"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "received SIGTERM again while stopping; ignored" in first.stdout + first.stderr
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert summary["status"] == "preempted" and step in (5, 6)
    second = cli(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert final_state(run)["global_step"] == 8
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_corrupt_last_checkpoint_falls_back(make_cfg, caplog):
    """resume=<run folder> with a corrupt last.ckpt: reported with its path, the previous good one is used."""
    cfg = make_cfg(TINY + ["trainer.max_epochs=1"], sub="a")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x00garbage, as after a disk fault")
    cfg2 = make_cfg(TINY + [f"resume={run}"], sub="b")
    train(cfg2)
    assert "last.ckpt is corrupt" in caplog.text and str(run) in caplog.text
    assert final_state(run)["global_step"] == 8  # continued from step_0000003.ckpt to the end


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"step": 2, "bad": lambda: None}, path)  # unpicklable: the write fails midway
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_nan_loss_stops_with_step_and_batch_on_disk(make_cfg, capsys):
    inject = ["+callbacks.fault_injection._target_=lightning_modules.callbacks.reliability.FaultInjection",
              "+callbacks.fault_injection.nan_batch_at_step=2"]
    cfg = make_cfg(TINY + inject)
    with pytest.raises(SystemExit):
        train(cfg)
    err = capsys.readouterr().err
    assert "non-finite loss at global step 2" in err and "Traceback" not in err
    run = Path(cfg.paths.output_dir)
    saved = torch.load(run / "faults" / "step_0000002_batch.pt", weights_only=False)
    assert torch.isnan(saved["batch"]["x"]).any()


def test_nan_loss_skip_policy_finishes_and_reports_the_skip(make_cfg, caplog):
    inject = [INJECT, "+callbacks.fault_injection.nan_batch_at_step=2", "model.nonfinite=skip"]
    cfg = make_cfg(TINY + inject)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = final_state(run)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["train/skipped_steps"] == 1
    assert "non-finite loss at global step 2: step skipped (1 of 3 steps so far" in caplog.text
    logged = [float(r["train/skipped_steps"]) for r in csv_rows(run) if r.get("train/skipped_steps")]
    assert logged[:2] == [0.0, 0.0] and logged[-1] == 1.0 and ckpt["kakusan_nonfinite"] == {"skipped": 1}


def test_diverging_run_with_skip_policy_stops_and_says_why(make_cfg, capsys):
    """lr=1e10 blows the weights up after one step; skipping every later step cannot repair them, so the
    run stops once more than the allowed share of steps was skipped, with the count in summary.json."""
    cfg = make_cfg(TINY + ["model.nonfinite=skip", "model.optimizer.lr=1e10"])
    with pytest.raises(SystemExit) as e:
        train(cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "training diverged: 3 of the 5 optimiser steps so far had a non-finite loss" in err
    assert "model.nonfinite_max_skip_share" in err and "lower the learning rate (now 5e+08)" in err  # in warm-up
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["train/skipped_steps"] == 3


@pytest.mark.parametrize("args, expected", [
    (["model.optimizr.lr=1"], "Did you mean model.optimizer"),
    (["data=mnsit"], "Did you mean mnist"),
    (["data=image_folder", "data.path=/nonexistent/images", "model.sample_shape=[3,32,32]", "model.net.base_channels=8"],
     "/nonexistent/images does not exist"),
    (["data.batch_size=5000"], "larger than the training split"),
    (["sampler.steps=2000"], "[1, 1000]"),
])
def test_user_mistakes_one_paragraph_no_traceback(tmp_path, args, expected):
    r = cli(args + ["logger=csv", f"paths.log_dir={tmp_path}"], timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert expected in r.stderr and "Traceback" not in r.stderr


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (nanoseconds)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_bad_input_exits_2_in_one_paragraph_and_leaves_an_existing_run_untouched(make_cfg, capsys):
    cfg = make_cfg(TINY + ["trainer.max_epochs=1"], sub="r")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    capsys.readouterr()
    corrupt = run.parent / "copied.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip archive")
    inside = run / "checkpoints" / "truncated.ckpt"
    inside.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    os.utime(inside, (1, 1))  # the oldest file: resume=<run folder> still picks last.ckpt
    cases = [
        (["data.batch_size=0", f"resume={run}"], "data.batch_size must be a whole number >= 1, got 0"),
        (["data.batch_size=-4", f"resume={run}"], "data.batch_size must be a whole number >= 1, got -4"),
        (["trainer.max_epochs=-5", f"resume={run}"], "cannot build the trainer (pytorch_lightning.Trainer)"),
        (["seed=abc", f"resume={run}"], "seed must be a whole number in [0, 2**32)"),
        ([f"resume={corrupt}"], f"checkpoint {corrupt} is corrupt or not a PyTorch checkpoint"),
        ([f"resume={inside}"], f"checkpoint {inside} is corrupt or not a PyTorch checkpoint"),
    ]
    before = snapshot(run)
    for i, (bad, expected) in enumerate(cases):
        with pytest.raises(SystemExit) as e:
            train(make_cfg(TINY + bad, sub=f"bad{i}"))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and expected in err, (bad, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err  # one paragraph
        assert snapshot(run) == before, bad  # nothing written into the existing run


def test_corrupt_ckpt_path_is_named_before_the_manifest_records_anything(make_cfg, tmp_path, capsys):
    bad = tmp_path / "weights.ckpt"
    bad.write_bytes(b"\x00" * 64)
    cfg = make_cfg(TINY + [f"ckpt_path={bad}"], sub="c")
    with pytest.raises(SystemExit) as e:
        train(cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"checkpoint {bad} is corrupt" in err and "Traceback" not in err
    assert not (Path(cfg.paths.output_dir) / "manifest.json").exists()
