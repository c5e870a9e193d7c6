"""Timestep grids for sampling with fewer steps than training (respacing)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPACINGS = ("linspace", "leading", "trailing")


def make_timesteps(num_train_timesteps: int, steps: int, spacing: str = "linspace", steps_offset: int = 0) -> Tensor:
    """Descending integer timesteps ``t_1 > ... > t_S`` used by a sampler.

    - ``linspace``: ``round(linspace(0, T-1, S))`` (includes both ends).
    - ``leading``: multiples of ``T // S`` from 0, plus ``steps_offset`` (DDIM paper, Stable Diffusion).
    - ``trailing``: ``round(arange(T, 0, -T/S)) - 1``, which always starts at ``T-1``
      (Lin et al. 2024 recommend it so sampling starts from pure noise).
    These follow the conventions of the diffusers schedulers exactly.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"sampling steps must lie in [1, {num_train_timesteps}] (the training timesteps), got {steps}")
    T = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps outside [0, {T - 1}]")
    return torch.from_numpy(ts)
