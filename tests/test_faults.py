"""Fault injection: SIGKILL + resume=auto is exact, SIGTERM pre-empts cleanly, corrupt checkpoints
fall back, writes are atomic, NaNs are caught, user mistakes give one paragraph and no traceback."""
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


def cli(args, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def only_run(log_dir: Path, task="debug") -> Path:  # debug configs set task_name=debug
    runs = [p for p in (log_dir / task / "runs").iterdir() if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    return runs[0]


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def assert_same_params(a: dict, b: dict):
    assert a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6, rtol=0), k


@pytest.mark.parametrize("family", [[], ["experiment=ddpm_toy2d", "data.batch_size=64", "model.net.base_channels=null"]],
                         ids=["mnist_unet", "toy2d_mlp"])
def test_sigkill_mid_epoch_then_resume_auto_is_exact(tmp_path, family):
    args = [a for a in TINY if not (family and a.startswith(("model.net.base_channels", "model.net.attention")))]
    args = args + [a for a in family if not a.startswith("model.net.base_channels")]
    ref = cli(args + [f"paths.log_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    task = "debug"
    killed_args = args + [f"paths.log_dir={tmp_path / 'run'}", "resume=auto"]
    killed = cli(killed_args + ["+callbacks.fault_injection._target_=lightning_modules.callbacks.reliability.FaultInjection",
                                "+callbacks.fault_injection.at_step=7"])
    assert killed.returncode == -signal.SIGKILL
    run = only_run(tmp_path / "run", task)
    assert torch.load(run / "checkpoints" / "step_0000006.ckpt", weights_only=False)["global_step"] == 6  # mid-epoch 1
    resumed = cli(killed_args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path / "run", task) == run  # continued in place, no second run folder
    assert_same_params(final_state(only_run(tmp_path / "ref", task)), final_state(run))
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1 and json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    args = TINY + [f"paths.log_dir={tmp_path}", "resume=auto"]
    first = cli(args + ["+callbacks.fault_injection._target_=lightning_modules.callbacks.reliability.FaultInjection",
                        "+callbacks.fault_injection.at_step=5", "+callbacks.fault_injection.signal_name=SIGTERM"])
    assert first.returncode == 0, first.stderr[-3000:]
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert summary["status"] == "preempted" and step in (5, 6)
    second = cli(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert final_state(run)["global_step"] == 8
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_corrupt_last_checkpoint_falls_back(make_cfg, caplog):
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


def test_nan_loss_skip_policy_finishes(make_cfg):
    inject = ["+callbacks.fault_injection._target_=lightning_modules.callbacks.reliability.FaultInjection",
              "+callbacks.fault_injection.nan_batch_at_step=2", "+model.nonfinite=skip"]
    cfg = make_cfg(TINY + inject)
    train(cfg)
    ckpt = final_state(Path(cfg.paths.output_dir))
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


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
