"""The ablation report on run folders written the way Hydra and the train entry point write them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.report import main as report_main
from kakusan.errors import UserError
from kakusan.report import make_report
from kakusan.report_runs import find_run_dirs


def fake_run(folder: Path, lr: float, pred: str, seed: int, val: float | None, error: str | None = None) -> Path:
    cfg = {"seed": seed, "model": {"optimizer": {"lr": lr}, "prediction_type": pred, "net": {"channel_mult": [1, 2]}},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"model.optimizer.lr={lr}", f"model.prediction_type={pred}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if error:
        (folder / "failure.json").write_text(json.dumps({"error": error, "traceback": "..."}))
        (folder / "summary.json").write_text(json.dumps({"status": "failed", "error": error}))
    elif val is not None:
        (folder / "summary.json").write_text(json.dumps({"status": "finished", "val/loss": val, "seed": seed,
                                                         "global_step": 4, "lr-AdamW": lr}))
        (folder / "csv").mkdir()
        steps = range(4)
        pd.DataFrame({"step": list(steps), "epoch": 0,
                      "train/loss_step": [val + 1 - 0.1 * s + 0.01 * seed for s in steps]}).to_csv(
            folder / "csv" / "metrics.csv", index=False)
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    num = 0
    for lr in (1e-4, 1e-3, 1e-2):
        for pred in ("eps", "v"):
            for seed in (0, 1):
                val = lr * 100 + (0.5 if pred == "v" else 0.0) + 0.01 * seed
                error = "ValueError: boom" if (lr, pred, seed) == (1e-2, "v", 1) else None
                fake_run(root / str(num), lr, pred, seed, val, error)
                num += 1
    (root / "12").mkdir()  # a job that died before writing anything but its config
    fake_run(root / "12", 1e-2, "v", 2, None)
    return root


def test_table_groups_seeds_and_lists_failures(sweep: Path):
    report = make_report([sweep], out=sweep / "out")
    assert report.keys == ["model.optimizer.lr", "model.prediction_type", "seed"]  # only what differs
    assert report.metrics == ["val/loss"]  # bookkeeping (global_step, lr-*) is not a result
    table = report.table.set_index(["model.optimizer.lr", "model.prediction_type"])
    assert len(table) == 6
    row = table.loc[(1e-3, "eps")]
    assert row["n"] == 2 and row["val/loss mean"] == pytest.approx(0.105)
    assert row["val/loss std"] == pytest.approx(0.01 / 2 ** 0.5)  # sample std over the two seeds
    bad = table.loc[(1e-2, "v")]
    assert bad["n"] == 1 and bad["failed"] == 2  # one failed, one incomplete: counted, not dropped
    assert {r.status for r in report.failed} == {"failed", "incomplete"}
    md = (sweep / "out" / "report.md").read_text()
    assert "| 0.001 | eps | 0.105 ± 0.0071 | 2 | 0 |" in md
    assert "Failed or incomplete runs (2)" in md and "ValueError: boom" in md
    runs = pd.read_csv(sweep / "out" / "runs.csv")
    assert len(runs) == 13 and set(runs["status"]) == {"finished", "failed", "incomplete"}
    pngs = {p.name for p in report.files if p.suffix == ".png"}
    assert {"val_loss_vs_model.optimizer.lr.png", "val_loss_vs_model.prediction_type.png",
            "curve_train_loss_step.png"} <= pngs


def test_cli_on_run_folders_and_errors(sweep: Path, tmp_path: Path, capsys):
    assert report_main([str(sweep / "0"), str(sweep / "1"), "--out", str(tmp_path / "two"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| val/loss | n |" in out and "± 0.0071 | 2 |" in out  # only the seed differs: one row
    assert report_main([str(sweep), "--metrics", "fid", "--out", str(tmp_path / "x")]) == 2
    assert "fid" in capsys.readouterr().err
    with pytest.raises(UserError):
        find_run_dirs([tmp_path / "two"])  # a folder without runs
