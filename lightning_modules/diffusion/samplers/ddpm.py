"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2), with respaced timesteps (Nichol & Dhariwal 2021)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from .base import ModelFn, NoiseDraw, Sampler, StepHook

VARIANCES = ("fixed_small", "fixed_large")


class DDPMSampler(Sampler):
    """Ancestral sampler on a (possibly respaced) timestep grid.

    For a grid ``t_1 > ... > t_S`` the respaced process has ``abar'_i = abar[t_i]`` and
    ``beta'_i = 1 - abar[t_i] / abar[t_{i+1}]``; each step draws from the posterior
    ``q(x_{t_{i+1}} | x_{t_i}, x0_hat)`` with variance ``beta_tilde`` (``fixed_small``) or ``beta``
    (``fixed_large``). The final step returns the posterior mean, without noise.
    With every training timestep this is exactly Algorithm 2 of the DDPM paper.
    """

    name = "ddpm"

    def __init__(self, steps: int | None = None, spacing: str = "linspace", variance: str = "fixed_small", **kw) -> None:
        super().__init__(steps=steps, spacing=spacing, **kw)
        if variance not in VARIANCES:
            raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.variance = variance

    def _loop(self, model_fn: ModelFn, schedule: NoiseSchedule, x: Tensor, prediction_type: str,
              noise: NoiseDraw, step_hook: StepHook | None) -> Tensor:
        ts = self.timesteps(schedule)
        abar = schedule.alphas_cumprod64.to(x.device)
        for i, t in self._iter(ts):
            t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
            a_t = abar[t]
            a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), dtype=abar.dtype, device=x.device)
            beta = 1 - a_t / a_prev
            _, x0, _ = self.predict(model_fn, schedule, prediction_type, x, t)
            c0 = (a_prev.sqrt() * beta / (1 - a_t)).float()
            ct = ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)).float()
            mean = c0 * x0 + ct * x
            if t_prev >= 0:
                # fixed_large: sigma^2 = beta. (Ho et al. replace the variance at t=0 by beta_tilde_1,
                # which only matters for likelihoods: the last step adds no noise.)
                var = beta * (1 - a_prev) / (1 - a_t) if self.variance == "fixed_small" else beta
                eps_new = noise(x.shape, x.device)
                x = mean + var.sqrt().float() * eps_new
            else:
                x = mean
            if step_hook is not None:
                x = step_hook(x, t_prev, i)
        return x
