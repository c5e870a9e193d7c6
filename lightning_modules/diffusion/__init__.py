"""Plain-PyTorch diffusion core: schedules, forward process, parameterisations, losses, samplers, EMA."""
from .ema import EMA
from .parameterization import PREDICTION_TYPES, to_x0_eps, training_target
from .schedule import NoiseSchedule, make_betas

__all__ = ["EMA", "NoiseSchedule", "make_betas", "PREDICTION_TYPES", "to_x0_eps", "training_target"]
