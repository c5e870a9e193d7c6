"""The generic diffusion LightningModule: a thin shell around plain-PyTorch parts.

It owns ``net`` (any denoiser ``net(x_t, t, **cond)``), a :class:`NoiseSchedule`, a
parameterisation (eps / x0 / v), an EMA copy and a default sampler. Data may be images
``(B,C,H,W)``, video ``(B,T,C,H,W)``, poses ``(B,J,3)`` or points ``(B,D)``: nothing here
assumes a shape. Model families specialise it through small hooks (``encode``/``decode``,
``net_conditions``) whose signatures never change.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from kakusan.errors import UserError

from .diffusion.ema import EMA
from .diffusion.guidance import check_guidance_interval, guided_model_fn
from .diffusion.losses import WEIGHTINGS, diffusion_loss, loss_weight
from .diffusion.parameterization import check_prediction_type, training_target
from .diffusion.samplers.base import Sampler, StepHook
from .diffusion.schedule import NoiseSchedule
from .numerics import NonFiniteGuard
from .optim import build_optimizers

log = logging.getLogger(__name__)


def plain_hparams(hparams: Any) -> None:
    """Replace OmegaConf containers (Hydra passes lists as ListConfig) by plain Python values, so
    checkpoints load with ``torch.load(weights_only=True)``, as Lightning does on resume."""
    from omegaconf import Container, OmegaConf

    for key, value in list(hparams.items()):
        if isinstance(value, Container):
            hparams[key] = OmegaConf.to_container(value, resolve=True)


class GuidanceError(UserError):
    """A guidance scale that cannot work: negative, or guidance of an unconditional model."""


def check_guidance_scale(scale: float) -> float:
    """Classifier-free guidance scales are ``>= 0``: 1 is the plain conditional model, 0 the unconditional
    one, above 1 guided; a negative scale pushes samples away from their condition."""
    if scale is None or not float(scale) >= 0.0:
        raise GuidanceError(f"guidance_scale must be >= 0 (1 = the plain conditional model, 0 = unconditional, "
                            f"> 1 = guided), got {scale}")
    return float(scale)


class DiffusionModule(pl.LightningModule):
    """Denoising diffusion training and sampling (Ho et al. 2020) for any data shape.

    Args:
        net: denoiser network.
        schedule: noise schedule (its buffers are saved in checkpoints).
        sampler: default sampler for ``sample()`` and validation grids.
        optimizer: ``functools.partial`` building the optimiser from parameters (Hydra ``_partial_``).
        lr_scheduler: optional partial building a scheduler from the optimiser (stepped per step).
        prediction_type: ``eps``, ``x0`` or ``v``.
        loss_weighting: ``uniform`` or ``min_snr`` (gamma ``min_snr_gamma``).
        ema_decay: EMA maximum decay; ``None`` disables EMA (sampling then uses the raw weights).
        num_classes: enables class conditioning from ``batch["y"]``.
        cond_drop_prob: probability of replacing the condition by the null condition in training
            (classifier-free guidance needs it > 0).
        guidance_scale: default guidance scale for ``sample()``.
        guidance_interval: ``[lo, hi]`` timesteps (inclusive) where guidance acts; the plain conditional
            model elsewhere (Kynkäänniemi et al. 2024). ``None``: every step.
        sample_shape: shape of one sample in model space, e.g. ``[1, 32, 32]``.
        compile: ``torch.compile`` the network in place (state-dict keys unchanged).
        channels_last: keep 4-D activations in channels-last memory format (faster convs on GPUs).
        nonfinite: what a NaN/Inf loss or gradient does: ``stop`` (error naming the step; the batch is
            written to ``<run>/faults/``), ``skip`` (drop that optimiser step) or ``ignore``.
        nonfinite_max_skip_share: with ``skip``, the run stops once more than this share of its steps
            was skipped (:class:`~lightning_modules.numerics.NonFiniteGuard`).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, sampler: Sampler,
                 optimizer: Callable[..., torch.optim.Optimizer], lr_scheduler: Callable | None = None,
                 prediction_type: str = "eps", loss_weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 loss_type: str = "mse", ema_decay: float | None = 0.999, ema_warmup: bool = True,
                 num_classes: int | None = None, cond_drop_prob: float = 0.0, guidance_scale: float = 1.0,
                 guidance_interval: list[int] | tuple[int, int] | None = None,
                 sample_shape: list[int] | tuple[int, ...] | None = None, val_timesteps_seed: int = 1234,
                 compile: bool = False, channels_last: bool = False, nonfinite: str = "stop",
                 nonfinite_max_skip_share: float = 0.1) -> None:
        super().__init__()
        check_prediction_type(prediction_type)
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        check_guidance_scale(guidance_scale)
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        self.save_hyperparameters(ignore=["net", "schedule", "sampler", "optimizer", "lr_scheduler"], logger=False)
        plain_hparams(self.hparams)
        self.net, self.schedule, self.sampler = net, schedule, sampler
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.prediction_type, self.loss_weighting, self.min_snr_gamma = prediction_type, loss_weighting, min_snr_gamma
        self.loss_type = loss_type
        self.num_classes, self.cond_drop_prob, self.guidance_scale = num_classes, cond_drop_prob, guidance_scale
        self.guidance_interval = check_guidance_interval(guidance_interval, schedule.num_timesteps)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.val_timesteps_seed = val_timesteps_seed
        self.nonfinite = NonFiniteGuard(nonfinite, nonfinite_max_skip_share)
        self.ema = EMA(self.net, max_decay=ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self.channels_last, self.compile_net = channels_last, compile
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.shadow.to(memory_format=torch.channels_last)
        self._use_ema = False
        sampler.validate(schedule)  # fail before training on impossible sampler settings

    # ----------------------------------------------------------------- hooks for model families
    def encode(self, x: Tensor) -> Tensor:
        """Map data to model space (identity for pixel models; latents for latent diffusion)."""
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Map model-space samples back to data space."""
        return z

    def net_conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``net`` taken from a batch (class labels by default)."""
        if self.num_classes:
            if "y" not in batch:
                raise KeyError("this model is class-conditional (num_classes set) but the batch has no 'y'")
            return {"y": batch["y"]}
        return {}

    def null_conditions(self, cond: dict[str, Any]) -> dict[str, Any] | None:
        """The unconditional counterpart of ``cond`` for guidance; ``None`` if the model is unconditional."""
        if "y" in cond:
            return {**cond, "y": torch.full_like(cond["y"], -1)}
        return None

    def drop_conditions(self, cond: dict[str, Any], keep: Tensor) -> dict[str, Any]:
        """Replace the condition of samples where ``keep`` is False by the null condition."""
        if "y" in cond:
            return {**cond, "y": torch.where(keep, cond["y"], torch.full_like(cond["y"], -1))}
        return cond

    def configure_model(self) -> None:
        if self.compile_net and not getattr(self, "_compiled", False):
            self.net.compile()  # in place: parameter names and checkpoints stay the same
            self._compiled = True

    def _memory_format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    # ----------------------------------------------------------------- training
    @property
    def denoiser(self) -> nn.Module:
        """The network used for prediction: EMA weights inside :meth:`ema_scope`."""
        return self.ema.shadow if (self._use_ema and self.ema is not None) else self.net

    @contextmanager
    def ema_scope(self, enabled: bool = True) -> Iterator[None]:
        """Use the EMA weights for everything inside the block (sampling, evaluation)."""
        previous = self._use_ema
        self._use_ema = enabled
        try:
            yield
        finally:
            self._use_ema = previous

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """The diffusion noise, in training and (as the sampler's ``noise_fn``) in sampling: standard
        normal here; video modules may correlate frames (noise prior)."""
        return torch.randn(shape, device=device, generator=generator, dtype=dtype)

    def diffusion_loss(self, x0: Tensor, cond: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (b,), device=x0.device, generator=generator)
        noise = self.draw_noise(tuple(x0.shape), generator, x0.device, x0.dtype)
        xt = self._memory_format(self.schedule.q_sample(x0, t, noise))
        pred = self.denoiser(xt, t, **cond)
        target = training_target(self.prediction_type, self.schedule, x0, noise, t)
        weight = loss_weight(self.loss_weighting, self.schedule, t, self.prediction_type, self.min_snr_gamma)
        return diffusion_loss(pred, target, weight, self.loss_type)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x0 = self.encode(batch["x"])
        cond = self.net_conditions(batch)
        if cond and self.cond_drop_prob > 0:
            keep = torch.rand(x0.shape[0], device=x0.device) >= self.cond_drop_prob
            cond = self.drop_conditions(cond, keep)
        loss = self.diffusion_loss(x0, cond)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0])
        self._last_loss, self._last_batch = loss.detach(), (batch, batch_idx)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the ``nonfinite`` policy to this step's loss and gradients."""
        batch, batch_idx = getattr(self, "_last_batch", (None, -1))
        # subclasses with their own training_step may not set _last_loss
        self.nonfinite.check(self, self.net, getattr(self, "_last_loss", None), batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kakusan_nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.load_state_dict(checkpoint.get("kakusan_nonfinite") or {})

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA follows every optimiser step, inside the step, so a checkpoint written in
        # on_train_batch_end (step checkpoints, pre-emption) already holds this step's EMA.
        if self.ema is not None:
            self.ema.update(self.net)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # Fixed timesteps and noise per batch: validation loss is comparable across epochs and runs.
        gen = torch.Generator(device=self.device).manual_seed(self.val_timesteps_seed + batch_idx)
        x0 = self.encode(batch["x"])
        with self.ema_scope(self.ema is not None):
            loss = self.diffusion_loss(x0, self.net_conditions(batch), generator=gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.val_timesteps_seed + batch_idx)
        x0 = self.encode(batch["x"])
        with self.ema_scope(self.ema is not None):
            loss = self.diffusion_loss(x0, self.net_conditions(batch), generator=gen)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizers(self, [p for p in self.net.parameters() if p.requires_grad],
                                self.optimizer_factory, self.lr_scheduler_factory)

    def model_fn(self, cond: dict[str, Any], guidance_scale: float | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(scale)
        null = self.null_conditions(cond) if scale != 1.0 else None
        if scale != 1.0 and null is None:
            raise GuidanceError(f"guidance_scale={scale:g} needs a conditional model (class labels or text, trained "
                                f"with cond_drop_prob > 0) and a condition to guide with; this model is "
                                f"unconditional: leave guidance_scale unset or set it to 1")
        return guided_model_fn(lambda x, t, **c: self.denoiser(x, t, **c), cond, null, scale,
                               interval=self.guidance_interval)

    @property
    def bounded_model_space(self) -> bool:
        """Whether data in model space lies in [-1, 1] (pixels). Latent modules return False."""
        return True

    def _unclipped(self, sampler: Sampler) -> Sampler:
        """Clipping the predicted ``x0`` to [-1, 1] is right for pixels and wrong for latents (their
        values are not bounded): a latent module samples with a copy of the sampler that does not clip."""
        if self.bounded_model_space or not getattr(sampler, "clip_x0", False):
            return sampler
        if not getattr(self, "_warned_clip", False):
            log.warning("%s samples in an unbounded latent space: sampler clip_x0 is turned off for it "
                        "(set sampler.clip_x0=false to silence this)", type(self).__name__)
            self._warned_clip = True
        sampler = copy.copy(sampler)
        sampler.clip_x0 = False
        return sampler

    @torch.no_grad()
    def sample(self, num: int, cond: dict[str, Any] | None = None, sampler: Sampler | None = None,
               generator: torch.Generator | None = None, guidance_scale: float | None = None,
               use_ema: bool = True, step_hook: StepHook | None = None, x_T: Tensor | None = None) -> Tensor:
        """Draw ``num`` samples in data space (decoded), using the EMA weights by default.

        ``cond`` holds net keyword arguments (e.g. ``{"y": labels}``) with batch size ``num``.
        For a class-conditional model called without ``cond``, labels cycle through the classes.
        """
        if self.sample_shape is None:
            raise ValueError("sample_shape is not set for this model; set model.sample_shape in the config")
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        sampler = self._unclipped(sampler or self.sampler)
        cond = dict(cond or {})
        if self.num_classes and "y" not in cond:
            cond["y"] = torch.arange(num, device=self.device) % self.num_classes
        cond = {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in cond.items()}
        was_training = self.training
        self.eval()
        try:
            with self.ema_scope(use_ema and self.ema is not None):
                z = sampler.sample(self.model_fn(cond, guidance_scale), self.schedule, (num, *self.sample_shape),
                                   self.prediction_type, generator=generator, device=self.device, x_T=x_T,
                                   step_hook=step_hook, noise_fn=self.draw_noise)
            return self.decode(z)
        finally:
            self.train(was_training)
