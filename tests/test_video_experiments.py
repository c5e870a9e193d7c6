"""Video / DiT experiments end to end on CPU: fast_dev_run, the ablation configs, UCF-101 without data,
and frame-wise latent video diffusion through an autoencoder checkpoint."""
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from experiments.train import train
from kakusan.errors import UserError

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


def test_framewise_latent_video_through_autoencoder_checkpoint(make_cfg, tmp_path):
    ae_cfg = make_cfg(["experiment=autoencoder_mnist", "model.autoencoder.base_channels=8"], sub="ae")
    ae_module = hydra.utils.instantiate(ae_cfg.model)
    ae_module.scale_factor.fill_(0.5)
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": ae_module.state_dict(),
                "kakusan": {"config": OmegaConf.to_container(ae_cfg, resolve=True)}}, ckpt)
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
    bad = make_cfg(["experiment=video_dit_moving_mnist", f"model.autoencoder_ckpt={tmp_path}/none.ckpt"], sub="bad")
    with pytest.raises(UserError, match="none.ckpt"):
        hydra.utils.instantiate(bad.model).setup("fit")
