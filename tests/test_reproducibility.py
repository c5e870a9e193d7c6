"""Reproducibility: deterministic mode, re-running a run from its manifest, the manifest's code patch."""
from __future__ import annotations

import csv
import json
import shlex
import subprocess
from pathlib import Path

import torch

import kakusan.manifest as manifest_mod
from experiments.train import train

TINY = ["debug=[limit,deterministic]", "model.net.base_channels=8", "model.net.attention_resolutions=[]",
        "data.batch_size=16", "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.sample_logger.num_samples=4", "callbacks.sample_logger.sampler.steps=3", "sampler.steps=3",
        "logger=csv", "seed=0"]


def losses(run: Path) -> list[float]:
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    return [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


def test_deterministic_run_reproduced_from_its_manifest(make_cfg):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = make_cfg(TINY, sub="original")
        assert cfg.trainer.deterministic is True
        train(cfg)
        first = Path(cfg.paths.output_dir)
        manifest = json.loads((first / "manifest.json").read_text())
        assert manifest["seed"] == 0 and manifest["overrides"] == TINY
        assert "hydra.run.dir=" in manifest["reproduce"] and manifest["command"] in manifest["reproduce"]
        # re-run the recorded command (its overrides) in a new folder
        args = shlex.split(manifest["command"])
        assert args[:3] == ["python", "-m", "experiments.train"]
        cfg2 = make_cfg(args[3:], sub="again")
        train(cfg2)
        second = Path(cfg2.paths.output_dir)
    finally:
        torch.set_num_threads(old)
    assert first != second
    la, lb = losses(first), losses(second)
    assert len(la) == 4 and la == lb  # identical loss curves, bit for bit
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (first, second))
    metrics = {k: v for k, v in s1.items() if "/" in k}
    assert metrics and metrics == {k: s2[k] for k in metrics}
    # evaluation is seeded: the sample grids (SampleLogger's fixed seed) are identical
    for name in ("epoch_000.png", "epoch_001.png", "final.png"):
        assert (first / "samples" / name).read_bytes() == (second / "samples" / name).read_bytes()


def test_manifest_patch_recreates_uncommitted_and_untracked_files(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "a")
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.yaml").write_text("lr: 0.1\nseed: 0")  # untracked, no final newline
    (repo / "blob.bin").write_bytes(b"\0" * 10)
    monkeypatch.setattr(manifest_mod, "PROJECT_ROOT", repo)
    state = manifest_mod.git_state()
    assert state["dirty"] and sorted(state["untracked"]) == ["blob.bin", "new.yaml"]
    assert state["untracked_not_in_patch"] == ["blob.bin"]
    patch = tmp_path / "p.patch"
    patch.write_text(state["diff"])
    git("checkout", "-q", "a.py")
    (repo / "new.yaml").unlink()
    git("apply", str(patch))
    assert (repo / "a.py").read_text() == "x = 2\n" and (repo / "new.yaml").read_text() == "lr: 0.1\nseed: 0"
    path = manifest_mod.write_manifest(tmp_path / "run", seed=0, overrides=["seed=0"], module="experiments.train")
    m = json.loads(path.read_text())
    assert sorted(m["git_untracked"]) == ["blob.bin", "new.yaml"] and m["command"] == "python -m experiments.train seed=0"
    assert m["git_dirty"] and m["git_diff_file"] == "git_diff.patch"
    assert "+++ b/new.yaml" in (tmp_path / "run" / "git_diff.patch").read_text()
