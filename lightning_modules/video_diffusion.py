"""Video diffusion: :class:`DiffusionModule` on clips ``(B, T, C, H, W)`` through its hooks only.

Everything else (schedule, eps/x0/v parameterisation, loss weighting, EMA, samplers,
classifier-free guidance) is shared with image diffusion. Three additions:

- **Frame-wise latent space** (optional): ``autoencoder_ckpt`` points at a checkpoint of
  ``lightning_modules.autoencoder.AutoencoderModule``; each frame is encoded to ``z * scale``
  and decoded back, so ``sample_shape`` is then the latent clip shape ``(T, c, h, w)`` and
  ``data_shape`` the pixel clip shape. ``cache_latents=True`` encodes the training clips once at
  the start of training (posterior mean and standard deviation per frame) and draws each step's
  latent from the cache, instead of running the encoder on every batch.
- **Joint image-video training** (Latte, Sec. 3.3): with probability ``image_batch_prob`` a
  training batch is treated as independent images (the net skips temporal attention and the
  temporal position embedding: ``independent_frames=True``). Under DDP this leaves the temporal
  blocks without gradients in such steps: use ``strategy=ddp_find_unused_parameters_true``.
- **Frame-correlated noise prior** (PYoCo, Ge et al. 2023): ``noise_prior`` = ``mixed`` or
  ``progressive`` draws the diffusion noise with frames correlated by ``noise_prior_alpha``, both
  in training and in sampling (see ``diffusion.noise_prior``); ``independent`` is the usual prior.
  A model must be sampled with the prior it was trained with; the checkpoint keeps it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kakusan.errors import UserError

from .diffusion.noise_prior import check_noise_prior, correlated_noise
from .diffusion_module import DiffusionModule


def load_frame_autoencoder(path: str) -> tuple[nn.Module, float]:
    """The frozen autoencoder and latent scale factor from an ``AutoencoderModule`` checkpoint."""
    from pathlib import Path

    from kakusan.checkpoint import load_module

    if not Path(path).is_file():
        raise UserError(f"autoencoder checkpoint {path} not found: train one first "
                        f"(python -m experiments.train experiment=<autoencoder experiment>) and set "
                        f"model.autoencoder_ckpt to its checkpoints/last.ckpt")
    module, _ = load_module(path)
    ae = getattr(module, "autoencoder", None)
    if ae is None:
        raise UserError(f"{path} is not an autoencoder checkpoint (its module has no 'autoencoder')")
    scale = float(getattr(module, "scale_factor", torch.zeros(())).item())
    if scale <= 0:
        raise UserError(f"{path}: the autoencoder's latent scale factor was never estimated; "
                        f"run at least one validation epoch of the autoencoder, or set model.latent_scale")
    return ae.eval().requires_grad_(False), scale


class VideoDiffusionModule(DiffusionModule):
    """Diffusion on video clips. ``sample_shape`` is one clip ``(T, C, H, W)`` in model space.

    Args:
        autoencoder_ckpt: optional frame autoencoder checkpoint (latent video diffusion).
        latent_scale: overrides the checkpoint's latent scale factor.
        data_shape: one clip in data space; defaults to ``sample_shape`` (pixel models).
        image_batch_prob: fraction of training batches trained as independent images.
        encode_batch_size: frames per autoencoder call (bounds memory).
        cache_latents: encode the training clips once at the start of training (latent models).
        noise_prior: ``independent`` | ``mixed`` | ``progressive`` (frame-correlated noise, PYoCo).
        noise_prior_alpha: the prior's ``alpha`` (``mixed``: frames correlate by a^2/(1+a^2);
            ``progressive``: neighbouring frames by a/sqrt(1+a^2)).
        other arguments: as :class:`DiffusionModule`.
    """

    def __init__(self, *args: Any, autoencoder_ckpt: str | None = None, latent_scale: float | None = None,
                 data_shape: list[int] | None = None, image_batch_prob: float = 0.0,
                 encode_batch_size: int = 64, cache_latents: bool = False, noise_prior: str = "independent",
                 noise_prior_alpha: float = 1.0, **kwargs: Any) -> None:
        try:
            check_noise_prior(noise_prior, float(noise_prior_alpha))
        except ValueError as err:
            raise UserError(f"model.noise_prior: {err}") from None
        super().__init__(*args, **kwargs)
        self.noise_prior, self.noise_prior_alpha = noise_prior, float(noise_prior_alpha)
        if self.sample_shape is not None and len(self.sample_shape) != 4:
            raise UserError(f"a video model's sample_shape is (T, C, H, W); got {list(self.sample_shape)}")
        if not 0.0 <= image_batch_prob <= 1.0:
            raise UserError(f"image_batch_prob must lie in [0, 1], got {image_batch_prob}")
        self.image_batch_prob, self.encode_batch_size = image_batch_prob, encode_batch_size
        self.cache_latents = cache_latents
        self.autoencoder_ckpt, self._latent_scale_override = autoencoder_ckpt, latent_scale
        self._autoencoder: nn.Module | None = None
        self.latent_scale = 1.0
        self._data_shape = tuple(data_shape) if data_shape is not None else None

    @property
    def bounded_model_space(self) -> bool:
        return not self.autoencoder_ckpt  # frame-wise latents are unbounded

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """One clip in data space (what the datamodule yields)."""
        return self._data_shape or self.sample_shape

    @property
    def autoencoder(self) -> nn.Module | None:
        """The frozen frame autoencoder, loaded on first use (or at ``setup``) from ``autoencoder_ckpt``."""
        if self.autoencoder_ckpt and self._autoencoder is None:
            ae, scale = load_frame_autoencoder(self.autoencoder_ckpt)
            object.__setattr__(self, "_autoencoder", ae)  # not a submodule: kept out of checkpoints
            self.latent_scale = float(self._latent_scale_override or scale)
        return self._autoencoder

    def setup(self, stage: str) -> None:
        self.autoencoder  # noqa: B018 - a missing checkpoint fails here, before the first step

    # ----------------------------------------------------------------- hooks
    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Noise for clips ``(B, T, ...)``, correlated along time by the configured prior."""
        return correlated_noise(shape, self.noise_prior, self.noise_prior_alpha, 1, generator, device, dtype)

    def _framewise(self, fn, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        frames = x.flatten(0, 1)
        out = torch.cat([fn(chunk) for chunk in frames.split(self.encode_batch_size)])
        return out.reshape(b, t, *out.shape[1:])

    def _cached_shape(self) -> tuple[int, ...]:
        t, c, h, w = self.sample_shape
        return t, 2 * c, h, w  # per frame: posterior mean and standard deviation

    def encode(self, x: Tensor) -> Tensor:
        if self.autoencoder is None:
            return x
        if tuple(x.shape[1:]) == self._cached_shape() != tuple(self.data_shape):  # from the latent cache
            mean, std = x.chunk(2, dim=2)
            return (mean + std * torch.randn_like(mean)) * self.latent_scale
        ae = self.autoencoder.to(x.device)
        with torch.no_grad():
            return self._framewise(lambda f: ae.encode(f).sample() * self.latent_scale, x)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if self.cache_latents and self.autoencoder is not None and getattr(dm, "train_set", None) is not None:
            self._cache_training_latents(dm)

    def _cache_training_latents(self, dm: Any) -> None:
        from datamodules.base import map_train_inputs

        ae = self.autoencoder.to(self.device)

        def moments(frames: Tensor) -> Tensor:  # (mean, std) of q(z|frame), stacked along channels
            post = ae.encode(frames)
            return torch.cat([post.mean, post.std], 1)

        clips = max(1, self.encode_batch_size // self.data_shape[0])  # clips per batch
        map_train_inputs(dm, lambda x: self._framewise(moments, x.to(self.device)), clips, self.data_shape)

    def decode(self, z: Tensor) -> Tensor:
        if self.autoencoder is None:
            return z
        ae = self.autoencoder.to(z.device)
        with torch.no_grad():
            return self._framewise(lambda f: ae.decode(f / self.latent_scale), z).clamp(-1, 1)

    def net_conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        cond = super().net_conditions(batch)
        if self.training and self.image_batch_prob > 0 and torch.rand(()).item() < self.image_batch_prob:
            cond["independent_frames"] = True
        return cond
