"""The sampler contract shared by DDPM, DDIM and faster solvers.

A sampler receives ``model_fn(x_t, t) -> raw network output`` (conditions and guidance
already bound), the noise schedule, the parameterisation and a shape. It knows nothing about
pixels, latents, video or poses, so one implementation serves every model family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..noise_prior import NoiseFn
from ..parameterization import check_prediction_type, to_x0_eps
from ..schedule import NoiseSchedule
from ..timesteps import make_timesteps

ModelFn = Callable[[Tensor, Tensor], Tensor]
# Called after every step with (x, t_next, step_index); may return a modified x
# (inpainting / known regions, projections). ``t_next`` is -1 after the last step.
StepHook = Callable[[Tensor, int, int], Tensor]
# What a step calls for fresh noise: (shape, device) -> Tensor (torch.randn or a noise prior).
NoiseDraw = Callable[[tuple[int, ...], torch.device], Tensor]


def threshold_x0(x0: Tensor, clip: bool, clip_range: float, dynamic_ratio: float | None,
                 dynamic_max: float = 1.0) -> Tensor:
    """Clip the predicted ``x0`` to ``[-clip_range, clip_range]``, or threshold it dynamically.

    Dynamic thresholding (Saharia et al. 2022): per sample, ``s`` is the ``ratio`` quantile of
    ``|x0|`` clamped to ``[1, dynamic_max]``; then ``x0 = clamp(x0, -s, s) / s``.
    """
    if dynamic_ratio is not None:
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, dynamic_ratio, dim=1).clamp(min=1.0, max=dynamic_max)
        s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return torch.maximum(torch.minimum(x0, s), -s) / s
    if clip:
        return x0.clamp(-clip_range, clip_range)
    return x0


class Sampler(ABC):
    """Base class: timestep grid, noise, progress bar, x0 post-processing.

    Args:
        steps: number of network evaluations (``None`` = every training timestep).
        spacing: ``linspace``, ``leading`` or ``trailing`` timestep grid.
        clip_x0: clip predicted x0 to ``[-clip_range, clip_range]`` (data in [-1, 1]).
        dynamic_threshold: quantile for dynamic thresholding (e.g. 0.995) or ``None``.
        progress: show a progress bar.
    """

    name = "base"

    def __init__(self, steps: int | None = None, spacing: str = "linspace", clip_x0: bool = True,
                 clip_range: float = 1.0, dynamic_threshold: float | None = None,
                 dynamic_threshold_max: float = 1.0, steps_offset: int = 0, progress: bool = True) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        if dynamic_threshold is not None and not 0.0 < dynamic_threshold <= 1.0:
            raise ValueError(f"dynamic_threshold must be a quantile in (0, 1], got {dynamic_threshold}")
        self.steps, self.spacing, self.steps_offset = steps, spacing, steps_offset
        self.clip_x0, self.clip_range = clip_x0, clip_range
        self.dynamic_threshold, self.dynamic_threshold_max = dynamic_threshold, dynamic_threshold_max
        self.progress = progress

    def validate(self, schedule: NoiseSchedule) -> None:
        """Raise before any sampling starts if the settings cannot work with this schedule."""
        self.timesteps(schedule)

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        steps = self.steps or schedule.num_timesteps
        return make_timesteps(schedule.num_timesteps, steps, self.spacing, self.steps_offset)

    def predict(self, model_fn: ModelFn, schedule: NoiseSchedule, prediction_type: str, x: Tensor,
                t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Return (raw output, x0_hat after clipping, eps_hat consistent with the clipped x0)."""
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = model_fn(x, tt)
        x0, eps = to_x0_eps(prediction_type, schedule, out.float(), x.float(), tt)
        clipped = threshold_x0(x0, self.clip_x0, self.clip_range, self.dynamic_threshold, self.dynamic_threshold_max)
        if clipped is not x0:
            a = schedule._get("sqrt_alphas_cumprod", tt, x.ndim)
            s = schedule._get("sqrt_one_minus_alphas_cumprod", tt, x.ndim)
            eps = (x.float() - a * clipped) / s
        return out, clipped, eps

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...], prediction_type: str = "eps",
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               x_T: Tensor | None = None, step_hook: StepHook | None = None,
               noise_fn: NoiseFn | None = None) -> Tensor:
        """Run the reverse process from ``x_T`` (drawn when not given) and return ``x_0``.

        ``noise_fn(shape, generator, device)`` replaces ``torch.randn`` for every noise draw (``x_T``
        and stochastic steps), e.g. the frame-correlated video prior of ``diffusion.noise_prior``.
        """
        check_prediction_type(prediction_type)
        self.validate(schedule)
        device = torch.device(device) if device is not None else schedule.betas.device

        def noise(size: tuple[int, ...], dev: torch.device) -> Tensor:
            if noise_fn is not None:
                return noise_fn(tuple(size), generator, dev).float()
            return torch.randn(size, generator=generator, device=dev)

        x = x_T.to(device) if x_T is not None else noise(tuple(shape), device)
        return self._loop(model_fn, schedule, x.float(), prediction_type, noise, step_hook)

    @abstractmethod
    def _loop(self, model_fn: ModelFn, schedule: NoiseSchedule, x: Tensor, prediction_type: str,
              noise: NoiseDraw, step_hook: StepHook | None) -> Tensor:
        """The reverse steps from ``x``; ``noise(shape, device)`` draws any fresh noise a step needs."""

    def _iter(self, ts: Tensor):
        return tqdm(list(enumerate(ts.tolist())), desc=f"{self.name} sampling", disable=not self.progress, leave=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, spacing={self.spacing!r})"
