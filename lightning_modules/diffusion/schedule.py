"""Discrete-time noise schedules (DDPM-style), registered once as buffers.

Notation follows Ho et al. 2020: ``beta_t`` is the per-step noise variance,
``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s``. Timesteps are
integer indices ``0..T-1`` (index ``t`` is the paper's ``t+1``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")


def make_betas(kind: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008, max_beta: float = 0.999,
               sigmoid_start: float = -3.0, sigmoid_end: float = 3.0, sigmoid_tau: float = 1.0) -> Tensor:
    """Return ``beta_1..beta_T`` in float64.

    - ``linear``: evenly spaced betas (Ho et al. 2020, 1e-4 .. 0.02 for T=1000).
    - ``scaled_linear``: evenly spaced square roots of beta (Stable Diffusion's schedule).
    - ``cosine``: ``alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)`` with betas clipped to
      ``max_beta`` (Nichol & Dhariwal 2021, eq. 17).
    - ``sigmoid``: ``alpha_bar`` follows a shifted sigmoid between ``sigmoid_start`` and
      ``sigmoid_end`` (Jabri et al. 2023 / Chen 2023), normalised to start at 1.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    T = num_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if kind in ("cosine", "sigmoid"):
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        if kind == "cosine":
            abar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        else:
            v_start = torch.sigmoid(torch.tensor(sigmoid_start / sigmoid_tau, dtype=torch.float64))
            v_end = torch.sigmoid(torch.tensor(sigmoid_end / sigmoid_tau, dtype=torch.float64))
            abar = (-torch.sigmoid((steps * (sigmoid_end - sigmoid_start) + sigmoid_start) / sigmoid_tau) + v_end) / (v_end - v_start)
        abar = abar / abar[0]
        betas = 1 - abar[1:] / abar[:-1]
        return betas.clamp(min=0.0, max=max_beta)
    raise ValueError(f"unknown noise schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale ``sqrt(alpha_bar)`` so the last step has SNR exactly 0 (Lin et al. 2024, Alg. 1)."""
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def extract(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """Gather ``values[t]`` and reshape to broadcast over a tensor with ``ndim`` dims."""
    out = values.gather(0, t.long().reshape(-1))
    return out.reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """All per-timestep coefficients of the forward and posterior processes, as buffers.

    Buffers are computed in float64 and stored in float32 (moved with the module,
    saved in checkpoints so a resumed run cannot drift to a different schedule).
    """

    def __init__(self, kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_s: float = 0.008, max_beta: float = 0.999,
                 zero_terminal_snr: bool = False, betas: Tensor | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.zero_terminal_snr = zero_terminal_snr
        if betas is None:
            betas = make_betas(kind, num_timesteps, beta_start, beta_end, cosine_s, max_beta)
            if zero_terminal_snr:
                betas = rescale_zero_terminal_snr(betas)
        betas = betas.to(torch.float64)
        if (betas <= 0).any() and not zero_terminal_snr:
            raise ValueError("betas must be positive")
        if (betas > 1).any():
            raise ValueError("betas must be <= 1")
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        # q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        post_var = torch.nan_to_num(post_var, nan=0.0)
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]).clamp(min=1e-20))
        coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)
        reg = {
            "betas": betas, "alphas": alphas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": abar.rsqrt(), "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_logvar,
            "posterior_mean_coef1": coef1, "posterior_mean_coef2": coef2,
        }
        for name, value in reg.items():
            self.register_buffer(name, value.to(torch.float32), persistent=True)
        # float64 copy for samplers that want exact arithmetic (not saved: derivable).
        self.register_buffer("alphas_cumprod64", abar, persistent=False)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_timesteps={self.num_timesteps}, zero_terminal_snr={self.zero_terminal_snr}"

    def _get(self, name: str, t: Tensor, ndim: int) -> Tensor:
        return extract(getattr(self, name), t.to(self.betas.device), ndim)

    def check_timesteps(self, t: Tensor) -> None:
        if t.min() < 0 or t.max() >= self.num_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}], got [{int(t.min())}, {int(t.max())}]")

    def sample_timesteps(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. eq. 4)."""
        return self._get("sqrt_alphas_cumprod", t, x0.ndim) * x0 + self._get("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eq. 7)."""
        mean = self._get("posterior_mean_coef1", t, xt.ndim) * x0 + self._get("posterior_mean_coef2", t, xt.ndim) * xt
        return mean, self._get("posterior_variance", t, xt.ndim), self._get("posterior_log_variance_clipped", t, xt.ndim)

    def snr(self, t: Tensor) -> Tensor:
        abar = self.alphas_cumprod[t.long()]
        return abar / (1 - abar)
