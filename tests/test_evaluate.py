"""The FID callback inside a (tiny) training run, and the seeded evaluate entry point on its checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.evaluate import evaluate
from experiments.train import train
from kakusan.summary import read_summary

TINY = ["experiment=ddpm_mnist", "debug=limit", "callbacks=metrics", "logger=csv",
        "data.conditional=true", "model.num_classes=10", "data.batch_size=16",
        "model.net.base_channels=8", "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.sample_logger=null", "callbacks.lr_monitor=null",
        "callbacks.fid_digits.num_samples=20", "callbacks.fid_digits.batch_size=10",
        "callbacks.fid_digits.sampler.steps=3", "callbacks.fid_digits.real_num_samples=500", "sampler.steps=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A class-conditional DDPM trained for two steps with the fid_digits callback on (callbacks=metrics)."""
    from tests.conftest import compose_cfg

    out = tmp_path_factory.mktemp("train") / "run"
    cfg = compose_cfg(TINY, out)
    train(cfg)
    return out


def test_fid_callback_writes_summary(tiny_run):
    summary = read_summary(tiny_run)
    assert summary["status"] == "finished"
    assert math.isfinite(summary["fid_digits"]) and summary["fid_digits"] > 0
    assert 0.0 <= summary["class_accuracy"] <= 1.0
    assert summary["fid_digits_num_samples"] == 20
    assert list((tiny_run / "cache" / "fid_stats").glob("mnist_train_32x32_digits_n500_*.npz"))
    metrics_csv = next(tiny_run.rglob("metrics.csv")).read_text()
    assert "fid_digits" in metrics_csv and "class_accuracy" in metrics_csv   # went to the logger too


def test_evaluate_is_seeded(tiny_run, make_cfg, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "metrics=[fid_digits,class_accuracy]", "num_samples=20", "batch_size=10",
              "sampler=ddim", "sampler.steps=3", "sampler.progress=false", "wandb.enabled=false"]

    def run(seed: int, sub: str) -> dict:
        cfg = make_cfg([*common, f"seed={seed}"], config_name="evaluate", sub=sub)
        cfg.paths.cache_dir = str(tiny_run / "cache")   # the training run's cached reference statistics
        return evaluate(cfg)

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a["fid_digits"] == b["fid_digits"] and a["class_accuracy"] == b["class_accuracy"]
    assert a["fid_digits"] != c["fid_digits"]
    assert a["sampler"]["_target_"].endswith("DDIMSampler") and a["num_samples"] == 20 and a["seed"] == 0
    a_dir = tmp_path / "a"
    assert (a_dir / "summary.json").is_file() and (a_dir / "manifest.json").is_file()
    assert (a_dir / "samples" / "evaluate.png").is_file()
    assert json.loads((a_dir / "manifest.json").read_text())["seed"] == 0


def test_evaluate_inception_with_wandb_offline(tiny_run, make_cfg):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = make_cfg([f"ckpt_path={ckpt}", "metrics=[kid_inception]", "num_samples=3", "batch_size=3",
                    "real_num_samples=3", "sampler=ddim", "sampler.steps=2", "sampler.progress=false",
                    "kid_subsets=5", "wandb.enabled=true"], config_name="evaluate")
    summary = evaluate(cfg)
    # fid_inception is the same code path with clean-fid's frechet_distance (tested in test_fid.py); its
    # 2048x2048 matrix square root takes too long for this suite, KID covers the Inception path end to end.
    assert math.isfinite(summary["kid_inception"])
    assert summary["real_num_samples/inception"] == 3
    out = cfg.paths.output_dir
    assert list((Path(out) / "wandb").glob("offline-run-*")), "the W&B run was not written"
    assert read_summary(out)["kid_inception"] == summary["kid_inception"]


def test_evaluate_rejects_unknown_metric(tiny_run, make_cfg):
    cfg = make_cfg([f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}", "metrics=[fid_typo]",
                    "wandb.enabled=false"], config_name="evaluate")
    with pytest.raises(SystemExit) as e:   # task_wrapper: a user error prints one paragraph and exits 2
        evaluate(cfg)
    assert e.value.code == 2
    assert "fid_typo" in read_summary(cfg.paths.output_dir)["error"]


def test_evaluate_video_metric_on_an_image_model_is_a_clear_error(tiny_run, make_cfg):
    cfg = make_cfg([f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}", "metrics=[video]", "num_samples=2",
                    "wandb.enabled=false"], config_name="evaluate", sub="video_on_images")
    with pytest.raises(SystemExit) as e:  # before any sampling
        evaluate(cfg)
    assert e.value.code == 2
    assert "needs a video model" in read_summary(cfg.paths.output_dir)["error"]
    assert not (Path(cfg.paths.output_dir) / "samples").exists()
