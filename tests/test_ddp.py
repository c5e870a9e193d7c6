"""A real 2-process CPU DDP run (gloo) through the CLI: one run folder, one summary, one W&B run."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from kakusan.wandb_setup import read_offline_run

from .conftest import ROOT

TINY = ["trainer=ddp_cpu", "debug=limit", "model.net.base_channels=8", "model.net.attention_resolutions=[]",
        "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.sample_logger.num_samples=4", "callbacks.sample_logger.sampler.steps=2", "sampler.steps=2",
        # debug= switches W&B off; switch it back on (offline) to check there is exactly one W&B run
        "+logger.wandb._target_=pytorch_lightning.loggers.WandbLogger", "+logger.wandb.project=kakusan",
        "+logger.wandb.save_dir=${paths.output_dir}"]


def test_ddp_cpu_two_processes_one_run_folder(tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "KAKUSAN_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *TINY, f"paths.log_dir={logs}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p for p in (logs / "ddpm_mnist" / "runs").iterdir()]
    assert len(runs) == 1, runs  # the rank-1 process wrote into rank 0's folder, not a new one
    run = runs[0]
    assert len(list(logs.rglob("summary.json"))) == 1 and len(list(logs.rglob("manifest.json"))) == 1
    assert not list(logs.rglob("failure*.json"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    log_text = (run / "ddpm_mnist.log").read_text()
    assert log_text.count("data: datamodules") == 2  # both ranks ran the job ...
    assert log_text.count("final.png") == 1          # ... the final samples were drawn once (rank 0)
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 1 and abs(val[0] - summary["val/loss"]) < 1e-6  # logged once, synced over ranks
    wandb_runs = list(logs.rglob("offline-run-*"))
    assert len(wandb_runs) == 1 and read_offline_run(wandb_runs[0])["exit_code"] == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert "trainer=ddp_cpu" in manifest["overrides"]
