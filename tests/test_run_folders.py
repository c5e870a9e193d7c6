"""Run folders are never lost: a command never re-uses a folder that holds another run, and two
processes never write one folder. Real processes, as users launch them."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.train import train
from kakusan.run_folder import RunFolderConflict, acquire_lock, claim_run_folder, release_run_folder

from .test_faults import INJECT, TINY, cli, snapshot


def test_a_finished_run_folder_is_never_overwritten(make_cfg, tmp_path):
    """Re-running into a finished run's folder with other overrides (the same folder given as hydra.run.dir)
    is refused with a message that names the folder and how to go on; not one file changes, .hydra/ and the
    log included. resume=auto on a finished run has nothing to do and changes nothing either."""
    cfg = make_cfg(TINY + ["trainer.max_epochs=1"], sub="done")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    (run / "ddpm_mnist.log").write_text("the original run's log\n")
    before = snapshot(run)
    other = cli(TINY + ["trainer.max_epochs=1", "model.optimizer.lr=1e-4", f"hydra.run.dir={run}"])
    assert other.returncode == 2, other.stderr[-2000:]
    assert f"{run} already holds a run (status: finished" in other.stderr
    assert f"To continue it, add resume={run}" in other.stderr and "leave out hydra.run.dir" in other.stderr
    assert "Traceback" not in other.stderr
    assert snapshot(run) == before
    again = cli(TINY + ["trainer.max_epochs=1", f"hydra.run.dir={run}", "resume=auto"])
    assert again.returncode == 0 and "has finished; nothing to do" in again.stderr
    assert snapshot(run) == before


def test_a_second_launch_of_a_running_run_is_refused_and_names_the_holder(tmp_path):
    """Two `resume=auto` launches of one run: the second stops with exit code 2 and names the first's PID;
    the first is not disturbed and finishes its work (here: stops cleanly on SIGTERM)."""
    run = tmp_path / "r"
    args = TINY + [f"hydra.run.dir={run}", "resume=auto"]
    env_cmd = [sys.executable, "-m", "experiments.train", *args, INJECT, "+callbacks.fault_injection.stall_at_step=2",
               "+callbacks.fault_injection.stall_seconds=120"]
    first = subprocess.Popen(env_cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        lock = run / ".lock"
        while time.monotonic() < deadline and not (run / "manifest.json").is_file():
            time.sleep(0.2)  # the first process has claimed the folder
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = cli(args)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{run} is in use by another process: PID {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    assert not (run / ".lock").exists()


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname(),
                                           "since": "earlier"}))
    claim_run_folder(run)  # the process that held it is gone
    assert "took over the lock" in caplog.text and json.loads((run / ".lock").read_text())["pid"] != int(dead.stdout)
    release_run_folder(run)
    assert not (run / ".lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": __import__("socket").gethostname(),
                                               "since": "now", "argv": ["train.py", "seed=1"]}))
        try:
            acquire_lock(run)
            raise AssertionError("a live holder must be refused")
        except RunFolderConflict as e:
            assert f"PID {holder.pid}" in str(e) and "train.py seed=1" in str(e)
    finally:
        holder.kill()
        holder.wait()
