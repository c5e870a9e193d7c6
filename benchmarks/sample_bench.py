"""Sampling throughput: ``DiffusionModule.sample`` with our DDIM-50 vs diffusers' ``DDIMScheduler`` loop.

Variants (same batch, same number of network evaluations):
- kakusan ``module.sample`` (EMA weights, ``torch.no_grad`` as the method declares);
- the same call inside ``torch.inference_mode()``;
- diffusers ``DDIMScheduler`` driving our very network (only the sampler loop differs);
- diffusers ``DDIMScheduler`` driving a diffusers ``UNet2DModel`` of matched size (the whole diffusers stack).
Until our ``DDIMSampler`` exists, DDPM with 50 respaced steps vs diffusers ``DDPMScheduler`` is used.
"""
from __future__ import annotations

import time
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig

from .common import num_params, sync


def our_sampler(steps: int):
    """(sampler, name): DDIM if ``lightning_modules/diffusion/samplers/ddim.py`` exists, else respaced DDPM."""
    try:
        from lightning_modules.diffusion.samplers.ddim import DDIMSampler

        return DDIMSampler(steps=steps, spacing="leading", eta=0.0, progress=False), f"DDIM-{steps}"
    except ImportError:
        from lightning_modules.diffusion.samplers.ddpm import DDPMSampler

        return DDPMSampler(steps=steps, spacing="leading", progress=False), f"DDPM-{steps} (respaced)"


DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # our name -> diffusers' name


def diffusers_scheduler(cfg: DictConfig, ddim: bool):
    from diffusers import DDIMScheduler, DDPMScheduler

    s = cfg.model.schedule
    kw = dict(num_train_timesteps=s.num_timesteps, beta_schedule="linear", beta_start=s.beta_start,
              beta_end=s.beta_end, clip_sample=True, timestep_spacing="leading",
              prediction_type=DIFFUSERS_PREDICTION[cfg.model.get("prediction_type", "eps")])
    return DDIMScheduler(set_alpha_to_one=True, **kw) if ddim else DDPMScheduler(**kw)


class SampleRunner:
    """One sampling variant; ``run()`` returns the wall time of one full sampling call."""

    def __init__(self, name: str, fn: Callable[[torch.Generator], torch.Tensor], device: torch.device,
                 params: int) -> None:
        self.name, self.fn, self.device, self.params = name, fn, device, params

    def run(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one sampling call."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            self.fn(gen)
        sync(self.device)
        return time.perf_counter() - wall, time.process_time() - cpu


def _scheduler_loop(scheduler, steps: int, net_out: Callable, shape, device, gen) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=gen, device=device)
    for t in scheduler.timesteps:
        tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        x = scheduler.step(net_out(x, tt), t, x, generator=gen).prev_sample
    return x


def build_runners(cfg: DictConfig, device: torch.device, batch: int, steps: int,
                  with_diffusers_net: bool = True) -> tuple[list[SampleRunner], str]:
    """The sampling variants for the model in ``cfg`` (any image-shaped ``DiffusionModule``)."""
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model).to(device).eval()
    sampler, label = our_sampler(steps)
    ddim = label.startswith("DDIM")
    shape = (batch, *module.sample_shape)
    net = module.ema.shadow if module.ema is not None else module.net
    params = num_params(module.net)

    def ours(gen):
        return module.sample(batch, sampler=sampler, generator=gen)

    def ours_inference(gen):
        with torch.inference_mode():
            return module.sample(batch, sampler=sampler, generator=gen)

    def diffusers_ours_net(gen):
        with torch.no_grad():  # as diffusers pipelines do
            return _scheduler_loop(diffusers_scheduler(cfg, ddim), steps, net, shape, device, gen)

    runners = [SampleRunner(f"kakusan module.sample, {label}", ours, device, params),
               SampleRunner(f"kakusan module.sample in inference_mode, {label}", ours_inference, device, params),
               SampleRunner(f"diffusers {'DDIM' if ddim else 'DDPM'}Scheduler loop, our network", diffusers_ours_net,
                            device, params)]
    if with_diffusers_net:
        from .train_bench import diffusers_unet_like

        torch.manual_seed(0)
        dnet = diffusers_unet_like(cfg).to(device).eval()

        def diffusers_full(gen):
            with torch.no_grad():
                return _scheduler_loop(diffusers_scheduler(cfg, ddim), steps, lambda x, t: dnet(x, t).sample,
                                       shape, device, gen)

        runners.append(SampleRunner(f"diffusers {'DDIM' if ddim else 'DDPM'}Scheduler loop, UNet2DModel",
                                    diffusers_full, device, num_params(dnet)))
    return runners, label
