"""Samplers: components that turn a denoiser into samples, for any data shape."""
from .base import Sampler
from .ddpm import DDPMSampler

__all__ = ["Sampler", "DDPMSampler"]
