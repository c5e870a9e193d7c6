"""Training-step time of latent diffusion vs pixel-space DDPM at equal batch size (prints a table).

    python -m experiments.bench_latent [--batch 64] [--steps 10] [--ae-ckpt PATH] [--device cpu]

Both models come from the real experiment configs (``ddpm_mnist`` and ``ldm_mnist_text``). The
latent step includes encoding the batch with the frozen autoencoder (random weights unless
``--ae-ckpt``: the cost does not depend on the weights); "cached" skips it (``cache_latents``).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(overrides: list[str], out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir, cfg.hydra.runtime.cwd, cfg.hydra.job.num = str(out), str(ROOT), 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def random_autoencoder_ckpt(folder: Path) -> Path:
    cfg = make_cfg(["experiment=autoencoder_mnist"], folder)
    module = hydra.utils.instantiate(cfg.model)
    module.scale_factor.fill_(1.0)
    path = folder / "random_ae.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "kakusan": {"config": {"model": OmegaConf.to_container(cfg.model, resolve=True)}}}, path)
    return path


def step_time(model, batch: dict, steps: int, device: torch.device) -> float:
    model.to(device).train()
    opt = model.optimizer_factory(params=[p for p in model.net.parameters() if p.requires_grad])
    times = []
    for i in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x0 = model.encode(batch["x"])
        loss = model.diffusion_loss(x0, model.net_conditions(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ae-ckpt", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.ae_ckpt or random_autoencoder_ckpt(tmp)
        pixel = hydra.utils.instantiate(make_cfg(["experiment=ddpm_mnist"], tmp).model)
        latent = hydra.utils.instantiate(make_cfg(["experiment=ldm_mnist_text", f"model.autoencoder_ckpt={ckpt}"],
                                                  tmp).model)
        from datamodules.captioned_mnist import all_captions

        latent.fit_tokenizer(all_captions())
        b = args.batch
        x = (torch.rand(b, 1, 32, 32, device=device) * 2 - 1)
        text = [all_captions()[i % 240] for i in range(b)]
        t_pixel = step_time(pixel, {"x": x}, args.steps, device)
        t_latent = step_time(latent, {"x": x, "text": text}, args.steps, device)
        with torch.no_grad():
            post = latent.first_stage.encode(x)
        cached = {"x": torch.cat([post.mean, post.std], 1), "text": text}
        t_cached = step_time(latent, cached, args.steps, device)
    n_pix = sum(p.numel() for p in pixel.net.parameters())
    n_lat = sum(p.numel() for p in latent.net.parameters())
    print(f"device {device}, batch {b}, median of {args.steps} steps, threads {torch.get_num_threads()}")
    print(f"{'model':<34}{'params':>10}{'step (s)':>12}{'vs pixel':>10}")
    print(f"{'pixel DDPM  (ddpm_mnist, 1x32x32)':<34}{n_pix / 1e6:>9.2f}M{t_pixel:>12.4f}{1.0:>10.2f}")
    print(f"{'latent (ldm_mnist_text, 4x8x8)':<34}{n_lat / 1e6:>9.2f}M{t_latent:>12.4f}{t_latent / t_pixel:>10.2f}")
    print(f"{'latent, cached latents':<34}{n_lat / 1e6:>9.2f}M{t_cached:>12.4f}{t_cached / t_pixel:>10.2f}")


if __name__ == "__main__":
    main()
