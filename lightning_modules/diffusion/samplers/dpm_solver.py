"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep second-order ODE solver on data predictions."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from ..timesteps import make_timesteps
from .base import ModelFn, NoiseDraw, Sampler, StepHook
from .ddim import check_spacing, check_zero_terminal, predict_exact

FINAL_SIGMAS = ("zero", "sigma_min")


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) with ``steps`` network evaluations.

    With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, ``lambda_t = log(alpha_t / sigma_t)``
    and ``h = lambda_t - lambda_s``, a step from ``s`` to ``t`` with data predictions ``D`` is::

        x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D

    where ``D = x0_s`` (first order; the first step, and the last when ``lower_order_final``) or
    ``D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev`` with ``r = h_prev / h`` (second order).
    The model may predict eps, x0 or v: every output is converted to x0 first.

    Timesteps follow diffusers' ``DPMSolverMultistepScheduler``: ``linspace``/``leading`` take
    ``steps + 1`` grid points and drop the last, ``trailing`` starts at ``T-1``; after the last
    grid point the solver steps to ``final_sigmas``: ``zero`` (returns the data prediction,
    always first order) or ``sigma_min`` (``abar[0]``). With ``steps = T`` the grid is every
    training timestep. ``abar_T = 0`` (zero terminal SNR) is handled exactly: the first step
    from ``lambda = -inf`` is a DDIM step.
    """

    name = "dpm_solver"

    def __init__(self, steps: int | None = 20, spacing: str = "linspace", lower_order_final: bool = True,
                 final_sigmas: str = "zero", **kw) -> None:
        check_spacing(spacing)
        if final_sigmas not in FINAL_SIGMAS:
            raise ValueError(f"unknown final_sigmas {final_sigmas!r}; choose one of {', '.join(FINAL_SIGMAS)}")
        super().__init__(steps=steps, spacing=spacing, **kw)
        self.lower_order_final, self.final_sigmas = lower_order_final, final_sigmas

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        T = schedule.num_timesteps
        steps = self.steps or T
        if self.spacing == "trailing" or steps >= T:
            return make_timesteps(T, steps, self.spacing if steps < T else "trailing", self.steps_offset)
        return make_timesteps(T, steps + 1, self.spacing, self.steps_offset)[:-1]

    def _loop(self, model_fn: ModelFn, schedule: NoiseSchedule, x: Tensor, prediction_type: str,
              noise: NoiseDraw, step_hook: StepHook | None) -> Tensor:
        ts = self.timesteps(schedule)
        check_zero_terminal(schedule, ts, prediction_type)
        abar = schedule.alphas_cumprod64.to(x.device)
        grid = abar[ts]
        last = torch.ones_like(grid[:1]) if self.final_sigmas == "zero" else abar[:1]
        abars = torch.cat([grid, last])
        alpha, sigma = abars.sqrt(), (1 - abars).clamp(min=0).sqrt()
        lam = alpha.log() - sigma.log()  # -inf at abar = 0, +inf at abar = 1
        n = len(ts)
        x0_prev = None
        for i, t in self._iter(ts):
            x0, _ = predict_exact(self, model_fn, schedule, prediction_type, x, t)
            h = lam[i + 1] - lam[i]
            first_order = x0_prev is None or (i == n - 1 and (self.final_sigmas == "zero" or
                                                               (self.lower_order_final and n < 15)))
            if first_order:
                d = x0
            else:
                r = (lam[i] - lam[i - 1]) / h
                # r = inf at the step after abar = 0 (h_prev infinite): the correction vanishes.
                c = 0.5 / r
                d = (1 + c).float() * x0 - c.float() * x0_prev
            ratio = sigma[i + 1] / sigma[i] if sigma[i + 1] > 0 else torch.zeros_like(h)
            x = ratio.float() * x + (alpha[i + 1] * -torch.expm1(-h)).float() * d
            x0_prev = x0
            if step_hook is not None:
                x = step_hook(x, int(ts[i + 1]) if i + 1 < n else -1, i)
        return x

    def __repr__(self) -> str:
        return f"DPMSolverSampler(steps={self.steps}, spacing={self.spacing!r}, order=2M)"
