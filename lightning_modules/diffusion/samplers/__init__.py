"""Samplers: components that turn a denoiser into samples, for any data shape."""
from .base import Sampler
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverSampler

__all__ = ["Sampler", "DDPMSampler", "DDIMSampler", "DPMSolverSampler"]
