"""What the network predicts (eps, x0 or v) and the conversions between them.

With ``x_t = a x_0 + s eps`` where ``a = sqrt(abar_t)`` and ``s = sqrt(1 - abar_t)``:
  eps = (x_t - a x_0) / s,   x_0 = (x_t - s eps) / a,
  v   = a eps - s x_0        (Salimans & Ho 2022),
  x_0 = a x_t - s v,         eps = s x_t + a v.
"""
from __future__ import annotations

from torch import Tensor

from .schedule import NoiseSchedule

PREDICTION_TYPES = ("eps", "x0", "v")


def _coeffs(schedule: NoiseSchedule, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
    return schedule._get("sqrt_alphas_cumprod", t, ndim), schedule._get("sqrt_one_minus_alphas_cumprod", t, ndim)


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def training_target(prediction_type: str, schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The regression target for the network at ``(x_t, t)``."""
    if prediction_type == "eps":
        return noise
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        a, s = _coeffs(schedule, t, x0.ndim)
        return a * noise - s * x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def to_x0_eps(prediction_type: str, schedule: NoiseSchedule, out: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Convert a raw network output into ``(x0_hat, eps_hat)``."""
    a, s = _coeffs(schedule, t, xt.ndim)
    if prediction_type == "eps":
        return (xt - s * out) / a, out
    if prediction_type == "x0":
        # s can be 0 only at t where abar=1, which no discrete schedule reaches.
        return out, (xt - a * out) / s
    if prediction_type == "v":
        return a * xt - s * out, s * xt + a * out
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def from_x0_eps(prediction_type: str, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Inverse of :func:`to_x0_eps`: express a prediction in the given parameterisation."""
    return training_target(prediction_type, schedule, x0, eps, t)
