"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12), deterministic (eta=0) to DDPM-like (eta=1)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from ..timesteps import SPACINGS
from .base import ModelFn, NoiseDraw, Sampler, StepHook, threshold_x0


def check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)} "
                         f"(e.g. sampler.spacing=trailing)")


def check_zero_terminal(schedule: NoiseSchedule, ts: Tensor, prediction_type: str) -> None:
    """An eps-predicting model cannot give x0 where ``abar_t = 0`` (zero terminal SNR, Lin et al. 2024)."""
    if prediction_type == "eps" and float(schedule.alphas_cumprod64[int(ts[0])]) == 0.0:
        raise ValueError("the schedule has zero terminal SNR (abar_T = 0) and the grid starts at T-1, where an "
                         "eps-prediction model cannot recover x0; train with model.prediction_type=v (Lin et al. "
                         "2024) or use a spacing/step count that does not start at the last timestep")


def predict_exact(sampler: Sampler, model_fn: ModelFn, schedule: NoiseSchedule, prediction_type: str, x: Tensor,
                  t: int) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat)`` at one shared timestep, with float64 coefficients.

    Same result as :meth:`Sampler.predict` but the conversion uses ``sqrt(abar_t)`` from the float64
    table: near ``abar_t = 0`` an eps-model's ``x0 = (x - s eps) / a`` amplifies float32 rounding of
    ``a`` by ``1/a`` (1e4 for the cosine schedule). ``eps`` is recomputed from a clipped ``x0``.
    """
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    out = model_fn(x, tt).float()
    abar = schedule.alphas_cumprod64[t]
    a, s = float(abar.sqrt()), float((1 - abar).sqrt())
    if prediction_type == "eps":
        x0, eps = (x - s * out) / a, out
    elif prediction_type == "x0":
        x0, eps = out, (x - a * out) / s
    else:  # v (Salimans & Ho 2022)
        x0, eps = a * x - s * out, s * x + a * out
    clipped = threshold_x0(x0, sampler.clip_x0, sampler.clip_range, sampler.dynamic_threshold,
                           sampler.dynamic_threshold_max)
    if clipped is not x0:
        eps = (x - a * clipped) / s
    return clipped, eps


class DDIMSampler(Sampler):
    """DDIM on a grid ``t_1 > ... > t_S`` (from :func:`make_timesteps`).

    Each step predicts ``(x0, eps)`` at ``t_i`` and moves to ``t_{i+1}`` (``abar_prev``)::

        sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z

    After the last grid point the target is ``abar = 1`` (``set_alpha_to_one``, returns ``x0``)
    or ``abar[0]`` (diffusers' ``set_alpha_to_one=False``). When ``x0`` is clipped or thresholded,
    ``eps`` is recomputed from the clipped ``x0`` (as guided-diffusion does; diffusers'
    ``use_clipped_model_output=True``).

    Args:
        eta: 0 = deterministic DDIM, 1 = the DDPM posterior variance. Must lie in [0, 1]: for
            ``eta > 1`` the noise variance can exceed ``1 - abar_prev`` and the step is undefined.
        set_alpha_to_one: final step to ``abar = 1`` (True) or to ``abar[0]`` (False).
    """

    name = "ddim"

    def __init__(self, steps: int | None = 50, spacing: str = "trailing", eta: float = 0.0,
                 set_alpha_to_one: bool = True, **kw) -> None:
        check_spacing(spacing)
        if eta < 0 or eta > 1:
            raise ValueError(f"DDIM eta must lie in [0, 1] (0 = deterministic, 1 = DDPM-like noise), got {eta}")
        super().__init__(steps=steps, spacing=spacing, **kw)
        self.eta, self.set_alpha_to_one = float(eta), set_alpha_to_one

    def _loop(self, model_fn: ModelFn, schedule: NoiseSchedule, x: Tensor, prediction_type: str,
              noise: NoiseDraw, step_hook: StepHook | None) -> Tensor:
        ts = self.timesteps(schedule)
        check_zero_terminal(schedule, ts, prediction_type)
        abar = schedule.alphas_cumprod64.to(x.device)
        final = torch.ones((), dtype=abar.dtype, device=x.device) if self.set_alpha_to_one else abar[0]
        for i, t in self._iter(ts):
            t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
            a_t, a_prev = abar[t], (abar[t_prev] if t_prev >= 0 else final)
            x0, eps = predict_exact(self, model_fn, schedule, prediction_type, x, t)
            var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
            sigma = self.eta * var.clamp(min=0).sqrt()
            direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt()
            x = a_prev.sqrt().float() * x0 + direction.float() * eps
            if self.eta > 0:
                eps_new = noise(x.shape, x.device)
                x = x + sigma.float() * eps_new
            if step_hook is not None:
                x = step_hook(x, t_prev, i)
        return x

    def __repr__(self) -> str:
        return f"DDIMSampler(steps={self.steps}, spacing={self.spacing!r}, eta={self.eta})"
