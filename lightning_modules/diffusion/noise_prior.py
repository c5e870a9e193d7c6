"""Frame-correlated Gaussian noise for video diffusion (PYoCo: Ge et al. 2023, "Preserve Your Own
Correlation: A Noise Prior for Video Diffusion Models", Sec. 3.2).

Independent noise per frame asks the denoiser to make every frame agree through attention alone:
at high noise each frame's Gaussian draw pulls it toward a different digit, and a small model
lets identity drift across the clip. PYoCo instead draws noise whose frames are correlated, so
the forward process keeps the frames' common content together and the reverse process starts
from a clip that already agrees with itself. Every element stays ``N(0, 1)``, so the schedule,
the parameterisations and the samplers are unchanged; only the noise that is drawn differs, in
training (``q(x_t | x_0)``) and in sampling (``x_T`` and any stochastic step).

With ``alpha >= 0`` and frames along ``frame_dim``:

- ``independent``: ``eps_i ~ N(0, I)`` (the usual prior).
- ``mixed``: ``eps_i = eps_shared + eps_ind_i`` with ``eps_shared ~ N(0, a^2/(1+a^2) I)`` and
  ``eps_ind_i ~ N(0, 1/(1+a^2) I)``; any two frames correlate by ``a^2 / (1 + a^2)``.
- ``progressive``: ``eps_0 ~ N(0, I)``, ``eps_i = a/sqrt(1+a^2) eps_{i-1} + eps_ind_i`` with
  ``eps_ind_i ~ N(0, 1/(1+a^2) I)``; frames ``k`` apart correlate by ``(a / sqrt(1+a^2))^k``,
  which suits motion better than one shared component.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

NOISE_PRIORS = ("independent", "mixed", "progressive")
# noise(shape, generator, device) -> Tensor of standard-normal marginals
NoiseFn = Callable[[tuple[int, ...], "torch.Generator | None", "torch.device | str | None"], Tensor]


def check_noise_prior(kind: str, alpha: float) -> None:
    if kind not in NOISE_PRIORS:
        raise ValueError(f"unknown noise prior {kind!r}; choose one of {', '.join(NOISE_PRIORS)}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"noise prior alpha must be a finite number >= 0, got {alpha}")


def frame_correlation(kind: str, alpha: float, lag: int) -> float:
    """The correlation of one element's noise in two frames ``lag`` apart (1 at lag 0)."""
    check_noise_prior(kind, alpha)
    if lag == 0:
        return 1.0
    if kind == "independent":
        return 0.0
    if kind == "mixed":
        return alpha ** 2 / (1 + alpha ** 2)
    return (alpha / math.sqrt(1 + alpha ** 2)) ** abs(lag)


def correlated_noise(shape: tuple[int, ...], kind: str = "independent", alpha: float = 1.0, frame_dim: int = 1,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> Tensor:
    """Noise of ``shape`` with standard-normal elements, correlated along ``frame_dim`` by ``kind``."""
    check_noise_prior(kind, alpha)
    shape = tuple(shape)
    if not -len(shape) <= frame_dim < len(shape):
        raise ValueError(f"frame_dim {frame_dim} is out of range for a noise shape {shape}")
    ind = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if kind == "independent" or alpha == 0:
        return ind
    frame_dim %= len(shape)
    keep = 1.0 / math.sqrt(1 + alpha ** 2)  # the standard deviation of each frame's own part
    if kind == "mixed":
        shared_shape = shape[:frame_dim] + (1,) + shape[frame_dim + 1:]
        shared = torch.randn(shared_shape, generator=generator, device=device, dtype=dtype)
        return shared * (alpha * keep) + ind * keep
    frames = list(ind.unbind(frame_dim))
    out = [frames[0]]  # eps_0 is a plain N(0, I) draw; later frames mix the previous one in
    for f in frames[1:]:
        out.append(out[-1] * (alpha * keep) + f * keep)
    return torch.stack(out, dim=frame_dim)


def noise_fn(kind: str = "independent", alpha: float = 1.0, frame_dim: int = 1) -> NoiseFn:
    """A ``noise(shape, generator, device)`` callable for :meth:`Sampler.sample`."""
    check_noise_prior(kind, alpha)

    def draw(shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> Tensor:
        return correlated_noise(shape, kind, alpha, frame_dim, generator, device)

    return draw
