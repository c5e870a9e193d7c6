"""Latent diffusion as a whole: autoencoder checkpoint -> frozen first stage -> text-conditional LDM."""
import json
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from experiments.train import train
from kakusan.errors import UserError
from lightning_modules.autoencoder import estimate_scale_factor, scale_images_from
from lightning_modules.latent_diffusion import LatentDiffusion, load_autoencoder
from tests.conftest import compose_cfg

AE_TINY = ["model.autoencoder.base_channels=8", "model.scale_images=32", "data.batch_size=16", "logger=csv"]
LDM_TINY = ["model.net.base_channels=8", "model.net.channel_mult=[1,2]", "model.net.num_res_blocks=1",
            "model.net.attention_resolutions=[4]", "model.text_encoder.dim=16", "model.text_encoder.num_layers=1",
            "data.batch_size=8", "logger=csv", "sampler.steps=3", "callbacks.sample_logger.num_samples=4",
            "callbacks.sample_logger.sampler.steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory) -> Path:
    """A tiny autoencoder trained for a few steps by the real entry point (debug=limit)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ae")
    cfg = compose_cfg(["experiment=autoencoder_mnist", "debug=limit", "trainer.max_epochs=1"] + AE_TINY, out / "run")
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["val/psnr"] > 0
    assert (out / "run" / "samples" / "recon_epoch_000.png").is_file()
    return out / "run" / "checkpoints" / "last.ckpt"


def user_error(exc: BaseException) -> UserError:
    """The UserError behind an exception (Hydra wraps errors raised in __init__ in InstantiationException)."""
    while exc is not None and not isinstance(exc, UserError):
        exc = exc.__cause__
    assert exc is not None, "expected a UserError"
    return exc


def ldm(make_cfg, ckpt, extra=()):
    cfg = make_cfg(["experiment=ldm_mnist_text", f"model.autoencoder_ckpt={ckpt}"] + LDM_TINY + list(extra))
    return cfg, hydra.utils.instantiate(cfg.model)


def test_scale_factor_saved_with_checkpoint_and_restored(ae_ckpt, make_cfg):
    ckpt = torch.load(ae_ckpt, weights_only=False)
    stored = float(ckpt["state_dict"]["scale_factor"])
    assert stored > 0
    ae, scale = load_autoencoder(ae_ckpt)
    assert scale == stored
    cfg = make_cfg(["experiment=autoencoder_mnist"] + AE_TINY)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert estimate_scale_factor(ae, scale_images_from(dm, 32)) == pytest.approx(stored, rel=1e-5)
    cfg, model = ldm(make_cfg, ae_ckpt)
    assert float(model.scale_factor) == stored and "scale_factor" in model.state_dict()
    assert model.data_shape == (1, 32, 32) and model.sample_shape == (4, 8, 8)


def test_frozen_autoencoder_gets_no_gradient_and_is_not_optimised(ae_ckpt, make_cfg):
    cfg, model = ldm(make_cfg, ae_ckpt, ["model.lr_scheduler=null"])
    model.fit_tokenizer(["a handwritten digit 3", "the number seven"])
    opt = model.configure_optimizers()
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in model.first_stage.parameters()}
    assert {id(p) for p in model.net.text_encoder.parameters()} <= opt_ids  # trained jointly
    assert not any(k.startswith("ema.shadow.first_stage") or ".first_stage." in k for k in model.state_dict()
                   if k.startswith("ema."))
    assert any(k.startswith("ema.shadow.text_encoder.") for k in model.state_dict())
    model.train()
    assert not model.first_stage.training
    batch = {"x": torch.rand(4, 1, 32, 32) * 2 - 1, "y": torch.arange(4), "text": ["a handwritten digit 3"] * 4}
    loss = model.diffusion_loss(model.encode(batch["x"]), model.net_conditions(batch))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.first_stage.parameters())
    assert any(p.grad is not None for p in model.net.text_encoder.parameters())


def test_prompt_dropout_gives_the_null_condition(ae_ckpt, make_cfg):
    cfg, model = ldm(make_cfg, ae_ckpt)
    model.fit_tokenizer(["a handwritten digit 3", "a handwritten seven"])
    cond = model.net_conditions({"text": ["a handwritten digit 3", "a handwritten seven"]})
    null = model.null_conditions(cond)
    empty = model.text_conditions(["", ""])
    assert torch.equal(null["tokens"], empty["tokens"]) and torch.equal(null["token_mask"], empty["token_mask"])
    dropped = model.drop_conditions(cond, torch.tensor([False, True]))
    assert torch.equal(dropped["tokens"][0], empty["tokens"][0]) and torch.equal(dropped["tokens"][1], cond["tokens"][1])
    assert torch.equal(dropped["token_mask"][0], empty["token_mask"][0])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():  # the dropped row sees exactly the empty-prompt context
        a = model.net(x, t, **dropped)
        b = model.net(x, t, **null)
    torch.testing.assert_close(a[0], b[0])
    g = torch.Generator().manual_seed(0)
    s1 = model.sample(2, cond={"text": ["a 3", "a 7"]}, generator=g, guidance_scale=3.0)
    g = torch.Generator().manual_seed(0)
    s2 = model.sample(2, cond={"text": ["a 3", "a 7"]}, generator=g, guidance_scale=3.0)
    assert s1.shape == (2, 1, 32, 32) and torch.equal(s1, s2) and s1.abs().max() <= 1


def test_missing_or_incompatible_autoencoder_is_a_clear_error(ae_ckpt, make_cfg, tmp_path):
    cfg = make_cfg(["experiment=ldm_mnist_text", "debug=fast_dev_run", f"model.autoencoder_ckpt={tmp_path}/nope.ckpt"]
                   + LDM_TINY)
    model = hydra.utils.instantiate(cfg.model)  # composes and instantiates; fails before training
    with pytest.raises(UserError, match="nope.ckpt does not exist.*experiment=autoencoder_mnist"):
        model.setup("fit")
    with pytest.raises(SystemExit):
        train(cfg)
    failure = json.loads((Path(cfg.paths.output_dir) / "failure.json").read_text())
    assert "nope.ckpt" in failure["error"] and "global_step" not in json.loads(
        (Path(cfg.paths.output_dir) / "summary.json").read_text())
    with pytest.raises(Exception) as ei:
        ldm(make_cfg, ae_ckpt, ["model.sample_shape=[3,8,8]"])
    assert "latents of shape (4, 8, 8)" in str(user_error(ei.value)) and "sample_shape" in str(user_error(ei.value))
    with pytest.raises(Exception) as ei:
        ldm(make_cfg, ae_ckpt, ["model.data_shape=[3,32,32]"])
    assert "does not fit the data" in str(user_error(ei.value))
    other = torch.load(ae_ckpt, weights_only=False)
    other["kakusan"]["config"]["model"]["_target_"] = "lightning_modules.diffusion_module.DiffusionModule"
    torch.save(other, tmp_path / "ddpm.ckpt")
    with pytest.raises(UserError, match="not an autoencoder checkpoint"):
        load_autoencoder(tmp_path / "ddpm.ckpt")
    bad = torch.load(ae_ckpt, weights_only=False)
    bad["kakusan"]["config"]["model"]["autoencoder"]["latent_channels"] = 3
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(UserError, match="do not match"):
        load_autoencoder(tmp_path / "bad.ckpt")


def test_fast_dev_run_autoencoder_mnist(make_cfg):
    cfg = make_cfg(["experiment=autoencoder_mnist", "debug=fast_dev_run"] + AE_TINY)
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["val/psnr"] > 0 and summary["scale_factor"] > 0


def test_fast_dev_run_ldm_mnist_text_and_checkpoint_round_trip(ae_ckpt, make_cfg):
    cfg = make_cfg(["experiment=ldm_mnist_text", "debug=limit", "trainer.max_epochs=1",
                    f"model.autoencoder_ckpt={ae_ckpt}"] + LDM_TINY)
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert summary["status"] == "finished" and summary["train/loss"] > 0
    assert (run / "samples" / "final.png").is_file()
    from kakusan.checkpoint import load_module

    module, _ = load_module(run / "checkpoints" / "last.ckpt")
    assert isinstance(module, LatentDiffusion)
    assert module.net.text_encoder.tokenizer.is_fitted and "handwritten" in module.net.text_encoder.tokenizer.words
    assert module.ema.shadow.text_encoder.tokenizer.words == module.net.text_encoder.tokenizer.words
    out = module.sample(2, cond={"text": ["a handwritten digit 3"] * 2}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 32, 32)
    cfg2 = make_cfg(["experiment=ldm_mnist_class", "debug=fast_dev_run", f"model.autoencoder_ckpt={ae_ckpt}",
                     "model.net.base_channels=8", "model.net.channel_mult=[1,2]", "model.net.num_res_blocks=1",
                     "data.batch_size=8", "logger=csv", "model.cache_latents=true"], sub="class")
    assert train(cfg2)["status"] == "finished"
    assert OmegaConf.select(cfg2, "model.num_classes") == 10


def test_diffusers_vae_from_local_folder_and_missing_weights(make_cfg, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    cfg, model = ldm(make_cfg, "unused", [f"model.pretrained_vae={tmp_path / 'vae'}"])
    assert float(model.scale_factor) == 0.5 and model.sample_shape == (4, 8, 8)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        ref = vae.encode(x).latent_dist
    assert z.shape == (2, 4, 8, 8)
    model.latent_sample = False
    torch.testing.assert_close(model.encode(x), ref.mean * 0.5)
    torch.testing.assert_close(model.decode(ref.mean * 0.5), vae.decode(ref.mean).sample.clamp(-1, 1))
    assert not any(p.requires_grad for p in model.first_stage.parameters())
    cfg, model = ldm(make_cfg, "unused", [f"model.pretrained_vae={tmp_path / 'absent'}"])  # instantiates
    with pytest.raises(UserError, match="absent.*save_pretrained"):
        model.setup("fit")  # ... and stops before training, naming the folder
    from lightning_modules.nets.text_encoder import CLIPTextEncoder

    clip = CLIPTextEncoder(str(tmp_path / "clip"))
    with pytest.raises(UserError, match="CLIP text encoder weights were not found at .*clip"):
        clip.tokenize(["a photo"])


def test_sd_like_composes_and_fails_before_training_without_weights(make_cfg):
    cfg = make_cfg(["experiment=ldm_sd_like", "model.net.base_channels=8", "model.net.channel_mult=[1,2]",
                    "model.net.num_res_blocks=1", "model.net.attention_resolutions=[32]"])  # SD-size U-Net: 0.7B params
    assert cfg.external_data and cfg.model.sample_shape == [4, 64, 64]
    model = hydra.utils.instantiate(cfg.model)
    assert model.data_shape == (3, 512, 512) and model.frozen_text_encoder is not None
    assert model.net.text_encoder is None  # frozen CLIP stays outside net, so out of the optimiser and EMA
    with pytest.raises(UserError, match="sd-vae"):
        model.setup("fit")
