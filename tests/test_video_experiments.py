"""Video / DiT experiments end to end on CPU: fast_dev_run, the ablation configs, UCF-101 without data,
and frame-wise latent video diffusion through an autoencoder checkpoint."""
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from experiments.train import train
from kakusan.errors import UserError
from tests.test_dit import randomise_

FAST = ["debug=fast_dev_run", "logger=csv"]


def test_video_dit_moving_mnist_fast_dev_run_writes_gif(make_cfg):
    cfg = make_cfg(["experiment=video_dit_moving_mnist", *FAST, "model.net.hidden_size=32", "model.net.depth=2",
                    "data.num_train=32", "data.num_val=16", "callbacks.video_logger.num_samples=3",
                    "sampler.steps=2", "callbacks.video_logger.per_sample=1"])
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert summary["status"] == "finished"
    assert (run / "samples" / "final_grid.gif").is_file() and (run / "samples" / "final_filmstrip.png").is_file()
    assert (run / "samples" / "final" / "00.gif").is_file()
    assert not list((run / "samples").glob("*.pt"))  # the image SampleLogger is off in video experiments


def test_dit_mnist_fast_dev_run(make_cfg):
    cfg = make_cfg(["experiment=dit_mnist", *FAST, "model.net.hidden_size=48", "model.net.depth=2",
                    "callbacks.sample_logger.num_samples=4", "sampler.steps=2"])
    assert train(cfg)["status"] == "finished"
    assert (Path(cfg.paths.output_dir) / "samples" / "final.png").is_file()


@pytest.mark.parametrize("variant", ["interleaved", "late_fusion", "factorised", "joint"])
def test_ablation_variants_compose(make_cfg, variant):
    cfg = make_cfg(["experiment=video_dit_moving_mnist", f"model.net.variant={variant}"])
    assert cfg.model.net.variant == variant and cfg.callbacks.sample_logger is None
    assert cfg.model.net.num_frames == cfg.data.frames == 8


def test_latte_ucf101_without_data_names_the_folder(make_cfg, capsys, tmp_path):
    cfg = make_cfg(["experiment=latte_ucf101", *FAST, f"paths.data_dir={tmp_path}"])
    assert cfg.external_data is True and cfg.model.net.patch_size == 2 and cfg.data.frame_stride == 3
    with pytest.raises(SystemExit) as e:
        train(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "UCF-101" in err and "crcv.ucf.edu" in err and "Traceback" not in err


def tiny_autoencoder_ckpt(make_cfg, tmp_path: Path) -> Path:
    """An untrained small KL autoencoder saved as a kakusan checkpoint (latent scale 0.5)."""
    ae_cfg = make_cfg(["experiment=autoencoder_mnist", "model.autoencoder.base_channels=8"], sub="ae")
    ae_module = hydra.utils.instantiate(ae_cfg.model)
    ae_module.scale_factor.fill_(0.5)
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": ae_module.state_dict(),
                "kakusan": {"config": OmegaConf.to_container(ae_cfg, resolve=True)}}, ckpt)
    return ckpt


def test_framewise_latent_video_through_autoencoder_checkpoint(make_cfg, tmp_path):
    ckpt = tiny_autoencoder_ckpt(make_cfg, tmp_path)
    cfg = make_cfg(["experiment=video_dit_moving_mnist", f"model.autoencoder_ckpt={ckpt}",
                    "model.sample_shape=[8,4,8,8]", "model.data_shape=[8,1,32,32]", "model.net.patch_size=2",
                    "model.net.hidden_size=32", "model.net.depth=2", "data.image_size=32"], sub="video")
    model = hydra.utils.instantiate(cfg.model)
    assert model.data_shape == (8, 1, 32, 32) and model.sample_shape == (8, 4, 8, 8)
    x = torch.rand(2, 8, 1, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 8, 4, 8, 8) and model.latent_scale == 0.5
    assert not any(k.startswith("_autoencoder") or k.startswith("autoencoder") for k in model.state_dict())
    loss = model.training_step({"x": x}, 0)
    assert torch.isfinite(loss)
    sampler = hydra.utils.instantiate({"_target_": "lightning_modules.diffusion.samplers.DDIMSampler", "steps": 2,
                                       "progress": False})
    clips = model.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert clips.shape == (2, 8, 1, 32, 32) and clips.abs().max() <= 1
    # latents are unbounded: a sampler set to clip x0 to [-1, 1] (the pixel default) is not allowed to clip them
    torch.nn.init.normal_(model.net.final_layer.linear.weight, std=1.0)  # x0 predictions far outside [-1, 1]
    make = lambda clip: hydra.utils.instantiate({"_target_": "lightning_modules.diffusion.samplers.DDIMSampler",  # noqa: E731
                                                 "steps": 2, "progress": False, "clip_x0": clip})
    clipping = make(True)
    draw = lambda s: model.sample(2, sampler=s, generator=torch.Generator().manual_seed(0), use_ema=False)  # noqa: E731
    assert torch.equal(draw(clipping), draw(make(False)))
    assert clipping.clip_x0 is True  # the caller's sampler is left as it was
    bad = make_cfg(["experiment=video_dit_moving_mnist", f"model.autoencoder_ckpt={tmp_path}/none.ckpt"], sub="bad")
    with pytest.raises(UserError, match="none.ckpt"):
        hydra.utils.instantiate(bad.model).setup("fit")


def test_video_metrics_callback_summary_and_seeded_repeat(make_cfg):
    import json
    import math
    from types import SimpleNamespace

    from kakusan.checkpoint import load_datamodule, load_module

    cfg = make_cfg(["experiment=video_dit_moving_mnist", "debug=limit", "logger=csv", "model.net.hidden_size=32",
                    "model.net.depth=2", "data.num_train=32", "data.num_val=16", "trainer.max_epochs=1",
                    "callbacks.video_logger.num_samples=2", "callbacks.video_logger.per_sample=1", "sampler.steps=2",
                    "callbacks.video_metrics.real_num_samples=16",
                    # class-conditional, so that evaluate's class_accuracy on clips runs beside the video metrics
                    "data.conditional=true", "model.num_classes=10", "model.cond_drop_prob=0.1"])
    assert cfg.callbacks.video_metrics.num_samples == 8  # the debug config shrinks it
    assert train(cfg)["status"] == "finished"
    run = Path(cfg.paths.output_dir)
    summary = json.loads((run / "summary.json").read_text())
    keys = ("video/frame_fid_digits", "video/fvd_random3d", "video/temporal_change_fake",
            "video/temporal_change_real", "video/temporal_change_gap", "video/digit_consistency_fake",
            "video/digit_agreement_next_fake", "video/digit_speed_fake", "video/digit_jerk_fake",
            "video/digit_speed_real")
    assert all(math.isfinite(summary[k]) for k in keys)
    assert summary["video/temporal_change_real"] > 0 and summary["video/frame_fid_digits"] > 0
    assert summary["video/digit_speed_real"] > 0.5  # the data's digits move (1 px per frame)
    # the numbers come from seeded samples: the checkpoint gives them again
    ckpt = run / "checkpoints" / "last.ckpt"
    module, ckpt_cfg = load_module(ckpt)
    cb = hydra.utils.instantiate(cfg.callbacks.video_metrics)
    trainer = SimpleNamespace(datamodule=load_datamodule(ckpt_cfg), is_global_zero=True)
    again = cb.evaluate(trainer, module)
    assert all(again[k] == pytest.approx(summary[k], rel=1e-5) for k in keys)
    # and so does the evaluate entry point, with the callback's samples, sampler and real clips (the whole
    # validation split), writing GIFs of the clips it scored
    from experiments.evaluate import evaluate

    ev = make_cfg([f"ckpt_path={ckpt}", "metrics=[class_accuracy,video]", "num_samples=8", "batch_size=8", "seed=0",
                   "real_split=val", "sampler=ddim", "sampler.steps=2", "sampler.progress=false",
                   "wandb.enabled=false"], config_name="evaluate", sub="evaluate")
    result = evaluate(ev)
    assert all(result[k] == pytest.approx(summary[k], rel=1e-4) for k in keys)
    assert result["real_num_samples/video"] == 16
    # class_accuracy on clips: every frame of a clip scored against the clip's requested digit (labels
    # cycle 0-9), as the callback's video/class_accuracy does
    from lightning_modules.callbacks.metrics import draw_samples
    from lightning_modules.metrics.video import _frame_digit_labels

    clips, labels = draw_samples(module, 8, 8, 0, hydra.utils.instantiate(ev.sampler), progress=False)
    assert labels.tolist() == list(range(8))
    frames_right = (_frame_digit_labels(clips) == labels[:, None]).float().mean().item()
    assert result["class_accuracy"] == pytest.approx(frames_right)
    assert summary["video/class_accuracy"] == pytest.approx(frames_right) == result["video/class_accuracy"]
    # and the real clips' frames against their own digits: the classifier's ceiling, the same both ways
    dm = load_datamodule(ckpt_cfg)
    real_right = (_frame_digit_labels(dm.real_samples(16, "val")) == dm.real_labels(16, "val")[:, None]).float().mean()
    assert summary["video/class_accuracy_real"] == pytest.approx(real_right.item())
    assert result["video/class_accuracy_real"] == pytest.approx(real_right.item())
    assert (Path(ev.paths.output_dir) / "samples" / "evaluate_grid.gif").is_file()
    # the per-class table: one row per requested digit, and its clip-weighted means are the all-clip scores
    rows = result["video/by_class"]
    assert [r["class"] for r in rows] == list(range(8)) and all(r["clips"] == 1 for r in rows)
    assert sum(r["requested_share"] for r in rows) / 8 == pytest.approx(frames_right)
    assert sum(r["consistency"] for r in rows) / 8 == pytest.approx(summary["video/digit_consistency_fake"])
    for folder in (run, Path(ev.paths.output_dir)):  # written by the callback and by evaluate, the same
        table = (folder / "video_by_class.md").read_text().splitlines()
        assert len(table) == 2 + 8 and table[2].startswith("| 0 | 1 | ")
    assert (run / "video_by_class.md").read_text() == (Path(ev.paths.output_dir) / "video_by_class.md").read_text()
    bad = make_cfg([f"ckpt_path={ckpt}", "metrics=[fid_digits]", "num_samples=2", "batch_size=2", "sampler=ddim",
                    "sampler.steps=1", "wandb.enabled=false"], config_name="evaluate", sub="evaluate_bad")
    with pytest.raises(SystemExit):  # a UserError (task wrapper: exit 2): image metrics on clips, before sampling
        evaluate(bad)
    assert "metrics=[video]" in json.loads((Path(bad.paths.output_dir) / "summary.json").read_text())["error"]
    assert not (Path(bad.paths.output_dir) / "samples").exists()


def test_video_metrics_callback_bad_settings(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from lightning_modules.callbacks.metrics import VideoMetricsCallback

    with pytest.raises(UserError, match="num_samples"):
        VideoMetricsCallback(num_samples=1)
    with pytest.raises(UserError, match="FVD extractor"):
        VideoMetricsCallback(fvd_extractor="c3d")
    # I3D weights missing: a clear error at setup, before any training, naming where it looked
    monkeypatch.delenv("KAKUSAN_I3D_PATH", raising=False)
    cb = VideoMetricsCallback(fid_extractor=None, fvd_extractor="i3d", i3d_path=str(tmp_path / "i3d.pt"))
    with pytest.raises(UserError, match="i3d.pt.*random3d"):
        cb.setup(None, SimpleNamespace(sample=None), "fit")


def test_video_ldm_moving_mnist_composes_latent_ablation(make_cfg):
    cfg = make_cfg(["experiment=video_ldm_moving_mnist", "model.net.variant=joint"])
    assert cfg.model.sample_shape == [8, 4, 8, 8] and cfg.model.data_shape == [8, 1, 32, 32] == [8, 1, *[cfg.data.image_size] * 2]
    assert cfg.model.net.in_channels == 4 and cfg.model.net.input_size == 8 and cfg.model.net.variant == "joint"
    assert cfg.model.autoencoder_ckpt.endswith("autoencoder_mnist/latest/last.ckpt")
    assert cfg.callbacks.video_metrics.fid_extractor == "digits"


def test_video_latent_cache_encodes_training_clips_once(make_cfg, tmp_path):
    from datamodules.base import TensorDictDataset

    ckpt = tiny_autoencoder_ckpt(make_cfg, tmp_path)
    cfg = make_cfg(["experiment=video_ldm_moving_mnist", f"model.autoencoder_ckpt={ckpt}", "model.cache_latents=true",
                    "model.net.hidden_size=32", "model.net.depth=2", "data.num_train=6", "data.num_val=4",
                    "data.batch_size=2"], sub="v")
    model = hydra.utils.instantiate(cfg.model)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    clips = dm.train_set.fields["x"].clone()
    model._cache_training_latents(dm)
    cached = dm.train_set.fields["x"]
    assert isinstance(dm.train_set, TensorDictDataset) and cached.shape == (6, 8, 8, 8, 8)  # (N, T, 2c, h, w)
    post = model.autoencoder.encode(clips[:2].flatten(0, 1))
    assert torch.allclose(cached[:2, :, :4].flatten(0, 1), post.mean, atol=1e-5)
    assert torch.allclose(cached[:2, :, 4:].flatten(0, 1), post.std, atol=1e-5)
    # a cached batch becomes a posterior sample in latent units; with zero spread, exactly the scaled mean
    z = model.encode(cached[:2])
    assert z.shape == (2, 8, 4, 8, 8) and not torch.equal(z, model.encode(cached[:2]))
    still = cached[:2].clone()
    still[:, :, 4:] = 0
    assert torch.allclose(model.encode(still), 0.5 * cached[:2, :, :4])
    model._cache_training_latents(dm)  # already cached: left alone
    assert dm.train_set.fields["x"] is cached
    assert torch.isfinite(model.training_step({"x": cached[:2]}, 0))


def test_class_conditional_latent_video_experiment_trains_and_samples_with_guidance(make_cfg, tmp_path):
    ckpt = tiny_autoencoder_ckpt(make_cfg, tmp_path)
    cfg = make_cfg(["experiment=video_ldm_moving_mnist_cond", f"model.autoencoder_ckpt={ckpt}",
                    "model.cache_latents=false", "model.net.hidden_size=32", "model.net.depth=2",
                    "data.num_train=6", "data.num_val=4", "data.batch_size=3"], sub="cond")
    assert cfg.model.num_classes == 10 and cfg.model.guidance_scale == 4.0 and cfg.data.conditional
    assert cfg.model.net.num_classes == 10 and cfg.trainer.max_epochs == 80
    model = hydra.utils.instantiate(cfg.model)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["y"].shape == (3,) and batch["y"].dtype == torch.long  # the clip's digit class
    model.setup("fit")
    assert torch.isfinite(model.training_step(batch, 0))
    sampler = hydra.utils.instantiate({"_target_": "lightning_modules.diffusion.samplers.DDIMSampler", "steps": 2,
                                       "progress": False})
    randomise_(model.net)  # adaLN-Zero: an untrained net ignores the class until its modulations move
    model.ema.shadow.load_state_dict(model.net.state_dict())
    draw = lambda y, g: model.sample(2, cond={"y": torch.tensor(y)}, sampler=sampler,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0), guidance_scale=g)
    a = draw([3, 7], 4.0)
    assert a.shape == (2, 8, 1, 32, 32) and torch.isfinite(a).all()
    assert not torch.equal(a, draw([5, 1], 4.0))  # the requested class changes the clip
    assert not torch.equal(a, draw([3, 7], 1.0))  # and guidance acts on it
    assert torch.equal(a, draw([3, 7], 4.0))  # seeded
