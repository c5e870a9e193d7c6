"""Training-step throughput: kakusan (Lightning) vs a bare PyTorch loop vs a diffusers loop.

Every runner does the same work per step: draw ``t`` and noise, noise the batch, predict eps with
the network, MSE loss, backward, gradient clipping at the config's ``gradient_clip_val``, AdamW
step, linear warm-up LR schedule step, and an EMA update of all weights (kept in every runner for
parity). All read the same in-memory MNIST batches through the same DataLoader settings.

Timing: a timestamp at the end of every step; a step's time is the gap to the previous one, so it
covers data loading, the step itself, logging, callbacks and the EMA update. The first steps
of every repetition are warm-up and are dropped.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_modules.diffusion.parameterization import check_prediction_type, training_target

from .common import compose_train_cfg, num_params, sync

for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(name).setLevel(logging.ERROR)


def framework_overrides(device: torch.device, batch_size: int, lean: bool) -> list[str]:
    """Overrides of the default ``train.yaml`` run for a training-throughput measurement.

    Normal run: CSV logger and the configured callbacks (LR monitor, progress bar, summary, run
    metadata, ...) except checkpointing and the sample grid, which run at epoch/step boundaries
    outside what is timed; validation is off. Lean: no logger, no callbacks, no progress bar.
    """
    ov = [f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}", f"data.batch_size={batch_size}",
          "++trainer.limit_val_batches=0", "++trainer.max_epochs=-1", "++trainer.enable_checkpointing=false",
          "++trainer.enable_model_summary=false", "++trainer.num_sanity_val_steps=0"]
    if device.type == "cuda":
        ov += ["++data.pin_memory=true"]
    if lean:
        ov += ["logger=none", "callbacks=none", "++trainer.enable_progress_bar=false"]
    else:
        ov += ["logger=csv", "callbacks.sample_logger=null", "++callbacks.fid_digits=null"]  # both run after the timed steps
    return ov


class _StepClock(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        sync(trainer.strategy.root_device)
        self.stamps.append(clock())


def clock() -> tuple[float, float]:
    """(wall time, CPU time of this process): CPU time is far less sensitive to other processes' load."""
    return time.perf_counter(), time.process_time()


def _intervals(stamps: list[tuple[float, float]], timed: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of the last ``timed`` steps."""
    stamps = stamps[-(timed + 1):]
    return ([b[0] - a[0] for a, b in zip(stamps, stamps[1:])], [b[1] - a[1] for a, b in zip(stamps, stamps[1:])])


class FrameworkRunner:
    """The real ``DiffusionModule`` trained by a real ``pytorch_lightning.Trainer`` built from the config."""

    def __init__(self, cfg: DictConfig, lean: bool = False) -> None:
        from kakusan.run import instantiate_group, resolved_config

        self.cfg, self.lean = cfg, lean
        self._instantiate_group, self._resolved = instantiate_group, resolved_config
        torch.manual_seed(0)
        self.datamodule = hydra.utils.instantiate(cfg.data)
        self.datamodule.setup("fit")
        torch.manual_seed(0)
        self.model = hydra.utils.instantiate(cfg.model)
        self.params = num_params(self.model.net)

    def run(self, steps: int, timed: int) -> tuple[list[float], list[float]]:
        cfg = self.cfg
        with open_dict(cfg):
            cfg.trainer.max_steps = steps
        clock = _StepClock()
        callbacks = self._instantiate_group(cfg.get("callbacks"), run_metadata={"run_config": self._resolved(cfg)})
        # checkpoints are written at epoch/step boundaries outside the timed steps: leave them out
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        loggers = self._instantiate_group(cfg.get("logger"))
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, clock], logger=loggers or False)
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), contextlib.redirect_stdout(null):  # bar still renders
            trainer.fit(self.model, datamodule=self.datamodule)
        return _intervals(clock.stamps, timed)


def _warmup_lambda(warmup: int):
    return lambda step: (step + 1) / warmup if warmup and step < warmup else 1.0


class _ManualLoop:
    """The shared body of the bare and diffusers loops: optimiser, clipping, LR warm-up, EMA."""

    def __init__(self, cfg: DictConfig, net: torch.nn.Module, device: torch.device) -> None:
        self.device, self.net = device, net.to(device)
        torch.manual_seed(0)
        self.datamodule = hydra.utils.instantiate(cfg.data)
        self.datamodule.setup("fit")
        self.loader = self.datamodule.train_dataloader()
        self.iterator = iter(self.loader)
        self.opt = hydra.utils.instantiate(cfg.model.optimizer)(params=[p for p in net.parameters() if p.requires_grad])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _warmup_lambda(int(cfg.model.lr_scheduler.warmup_steps)))
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.max_decay = cfg.model.ema_decay
        self.ema = copy.deepcopy(net).requires_grad_(False) if self.max_decay is not None else None
        self.num_updates = 0
        self.amp = device.type == "cuda"
        self.params = num_params(net)

    def _batch(self) -> dict[str, Any]:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self) -> None:
        x0 = self._batch()["x"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(x0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:  # same warm-up formula as lightning_modules.diffusion.ema.EMA
            self.num_updates += 1
            d = min(self.max_decay, 1 - (1 + self.num_updates) ** (-2 / 3))
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.net.parameters()], 1 - d)
        float(loss)  # what a loop printing the loss does; also a sync point as in Lightning's logging

    def run(self, steps: int, timed: int) -> tuple[list[float], list[float]]:
        self.net.train()
        stamps = []
        for _ in range(steps):
            self.step()
            sync(self.device)
            stamps.append(clock())
        return _intervals(stamps, timed)


class BareRunner(_ManualLoop):
    """Plain PyTorch: the same network class and weights init, our schedule's ``alphas_cumprod``."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        if cfg.model.get("loss_weighting", "uniform") != "uniform":
            raise ValueError("the bare loop implements uniform loss weighting only")
        self.prediction_type = check_prediction_type(cfg.model.get("prediction_type", "eps"))
        torch.manual_seed(0)
        net = hydra.utils.instantiate(cfg.model.net)
        super().__init__(cfg, net, device)
        self.schedule = hydra.utils.instantiate(cfg.model.schedule).to(device)
        self.abar = self.schedule.alphas_cumprod.float()
        self.channels_last = bool(cfg.model.get("channels_last", False))

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, len(self.abar), (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.abar[t].view(-1, *([1] * (x0.ndim - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = training_target(self.prediction_type, self.schedule, x0, noise, t)
        return F.mse_loss(self.net(xt, t).float(), target)


def diffusers_unet(sample_size: int = 32, channels: int = 1, block_out_channels=(32, 64, 64), layers_per_block: int = 1,
                   attention_levels: tuple[bool, ...] | None = None, heads: int = 4):
    """A diffusers ``UNet2DModel`` shaped like our UNet: the same levels, residual blocks per level, attention
    where ours has it (by default the lowest resolution only) and scale-shift time conditioning (ADM).
    With (32, 64, 64) it has 1.191 M parameters vs our 1.191 M; with (16, 32, 64) 0.717 M vs 0.717 M."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    attn = attention_levels or tuple(i == levels - 1 for i in range(levels))
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       layers_per_block=layers_per_block, block_out_channels=tuple(block_out_channels),
                       down_block_types=down, up_block_types=up,
                       attention_head_dim=block_out_channels[-1] // heads, resnet_time_scale_shift="scale_shift",
                       norm_num_groups=math.gcd(32, *block_out_channels))  # ours: min(32, channels) per layer


def diffusers_unet_like(cfg: DictConfig):
    """The diffusers twin of the configured ``model.net`` (a kakusan UNet)."""
    net, shape = cfg.model.net, list(cfg.model.sample_shape)
    mult = list(net.channel_mult)
    res = [shape[-1] // 2 ** i for i in range(len(mult))]
    return diffusers_unet(shape[-1], shape[0], tuple(net.base_channels * m for m in mult), int(net.num_res_blocks),
                          tuple(r in list(net.attention_resolutions) for r in res), int(net.heads))


class DiffusersRunner(_ManualLoop):
    """The diffusers training-script loop: ``UNet2DModel`` + ``DDPMScheduler.add_noise``."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        torch.manual_seed(0)
        net = diffusers_unet_like(cfg)
        super().__init__(cfg, net, device)
        self.prediction_type = check_prediction_type(cfg.model.get("prediction_type", "eps"))
        s = cfg.model.schedule
        self.scheduler = DDPMScheduler(num_train_timesteps=s.num_timesteps, beta_schedule="linear",
                                       beta_start=s.beta_start, beta_end=s.beta_end)
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        target = {"eps": lambda: noise, "x0": lambda: x0,  # diffusers' own target for each prediction type
                  "v": lambda: self.scheduler.get_velocity(x0, noise, t)}[self.prediction_type]()
        return F.mse_loss(self.net(noisy, t).sample.float(), target)


def build_cfg(device: torch.device, batch_size: int, lean: bool, extra: list[str] | None = None) -> DictConfig:
    return compose_train_cfg(framework_overrides(device, batch_size, lean) + list(extra or []))
