"""Per-sample loss weighting for the simple denoising objective."""
from __future__ import annotations

import torch
from torch import Tensor

from .schedule import NoiseSchedule

WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(weighting: str, schedule: NoiseSchedule, t: Tensor, prediction_type: str, gamma: float = 5.0) -> Tensor:
    """Weight per sample so that every parameterisation optimises the same Min-SNR-gamma objective.

    Hang et al. 2023: the x0-space weight is ``min(SNR, gamma)``; expressed for an eps target
    it is ``min(SNR, gamma) / SNR``, for a v target ``min(SNR, gamma) / (SNR + 1)``.
    """
    if weighting == "uniform":
        return torch.ones_like(t, dtype=torch.float32)
    if weighting == "min_snr":
        snr = schedule.snr(t)
        clipped = snr.clamp(max=gamma)
        if prediction_type == "eps":
            return clipped / snr
        if prediction_type == "v":
            return clipped / (snr + 1)
        return clipped
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def diffusion_loss(pred: Tensor, target: Tensor, weight: Tensor, kind: str = "mse") -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"network output shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    if kind == "mse":
        per = (pred.float() - target.float()) ** 2
    elif kind == "l1":
        per = (pred.float() - target.float()).abs()
    else:
        raise ValueError(f"unknown loss {kind!r}; choose mse or l1")
    per = per.reshape(per.shape[0], -1).mean(dim=1)
    return (per * weight).mean()
