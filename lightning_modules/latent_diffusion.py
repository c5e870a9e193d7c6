"""Latent diffusion (Rombach et al. 2022): diffusion on the latents of a frozen autoencoder.

A thin :class:`DiffusionModule` subclass: ``encode`` maps images to scaled latents
``scale_factor * z``, ``decode`` maps sampled latents back to images; the schedule,
parameterisation, samplers, EMA and guidance are the shared ones. The first stage is either a
kakusan autoencoder checkpoint (``autoencoder_ckpt``, trained with ``experiment=autoencoder_mnist``)
or a diffusers ``AutoencoderKL`` saved in a local folder (``pretrained_vae``). It stays frozen: eval
mode, no gradients, not in the optimiser, not in the EMA.

Conditioning: class labels (``num_classes``) and/or text through cross-attention. A trainable text
encoder lives inside ``net`` (a :class:`TextConditionedNet`), so it is optimised and EMA-averaged with
the U-Net; a frozen one (CLIP) stays outside and its context is computed under ``no_grad``.
Empty prompts are the null condition for classifier-free guidance.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import hydra
import torch
from torch import Tensor, nn

from kakusan.checkpoint import checkpoint_config, read_checkpoint
from kakusan.errors import UserError

from .autoencoder import estimate_scale_factor, scale_images_from
from .diffusion_module import DiffusionModule
from .nets.autoencoder import Autoencoder, DiagonalGaussian
from .nets.text_encoder import TextConditionedNet, resolve_pretrained

log = logging.getLogger(__name__)
TRAIN_AE_HINT = ("train one first: `python -m experiments.train experiment=autoencoder_mnist`, then pass "
                 "model.autoencoder_ckpt=<that run>/checkpoints/last.ckpt (or set KAKUSAN_AUTOENCODER_CKPT)")


def load_autoencoder(path: str | Path) -> tuple[Autoencoder, float]:
    """``(autoencoder, scale_factor)`` from a checkpoint written by ``experiment=autoencoder_mnist``."""
    if not path or not Path(path).is_file():
        raise UserError(f"the autoencoder checkpoint {path} does not exist; latent diffusion needs a trained "
                        f"first stage: {TRAIN_AE_HINT}")
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    target = str(cfg.model.get("_target_", ""))
    if not target.endswith("AutoencoderModule") or "autoencoder" not in cfg.model:
        raise UserError(f"{path} is not an autoencoder checkpoint (it holds {target or 'an unknown model'}); {TRAIN_AE_HINT}")
    ae = hydra.utils.instantiate(cfg.model.autoencoder)
    state = {k[len("autoencoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("autoencoder.")}
    try:
        ae.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"the weights in {path} do not match the autoencoder its config describes: {e}") from e
    return ae, float(ckpt["state_dict"].get("scale_factor", torch.zeros(())))


class DiffusersVAE(nn.Module):
    """Adapter giving a diffusers ``AutoencoderKL`` the kakusan autoencoder interface."""

    def __init__(self, path: str | None, hub_id: str | None = None, allow_download: bool = False) -> None:
        super().__init__()
        where = resolve_pretrained(path, "Stable-Diffusion VAE", hub_id, allow_download)
        from diffusers import AutoencoderKL

        sub = "vae" if (Path(where) / "vae").is_dir() else None
        try:
            self.vae = AutoencoderKL.from_pretrained(where, subfolder=sub) if sub else AutoencoderKL.from_pretrained(where)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load a diffusers AutoencoderKL from {where}: {e}") from e
        cfg = self.vae.config
        self.in_channels, self.latent_channels = int(cfg.in_channels), int(cfg.latent_channels)
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 0.0) or 0.0)

    def latent_shape(self, data_shape: Sequence[int]) -> tuple[int, int, int]:
        return Autoencoder.latent_shape(self, data_shape)  # same arithmetic

    def encode(self, x: Tensor) -> DiagonalGaussian:
        dist = self.vae.encode(x).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


class LatentDiffusion(DiffusionModule):
    """Args (besides :class:`DiffusionModule`'s):
        data_shape: one data item, e.g. ``[1, 32, 32]``; ``sample_shape`` (latents) follows from it.
        autoencoder_ckpt: kakusan autoencoder checkpoint (``experiment=autoencoder_mnist``).
        pretrained_vae: alternatively a local diffusers ``AutoencoderKL`` folder (``vae_hub_id`` +
            ``allow_download`` fetch it only where the network is allowed).
        scale_factor: latent scale override; by default the checkpoint's (or the VAE config's), and
            estimated as ``1/std`` at the start of training when missing.
        text_encoder: optional text encoder (trainable -> inside ``net``; frozen -> outside).
        latent_sample: train on ``z ~ q(z|x)`` (true) or on the posterior mean.
        cache_latents: encode the training set once at the start of training and train on the cache.
        default_prompts: prompts cycled when ``sample()`` is called without a condition.
    """

    @property
    def bounded_model_space(self) -> bool:
        return False  # latents are not bounded to [-1, 1]

    def __init__(self, net: nn.Module, *args: Any, data_shape: Sequence[int], autoencoder_ckpt: str | None = None,
                 pretrained_vae: str | None = None, vae_hub_id: str | None = None, allow_download: bool = False,
                 scale_factor: float | None = None, text_encoder: nn.Module | None = None, latent_sample: bool = True,
                 cache_latents: bool = False, cache_batch_size: int = 256,
                 default_prompts: Sequence[str] | None = None, **kwargs: Any) -> None:
        data_shape = tuple(int(s) for s in data_shape)
        sample_shape = kwargs.pop("sample_shape", None)
        first_stage, stored_scale = None, 0.0
        if pretrained_vae and (Path(pretrained_vae).expanduser().is_dir() or allow_download):
            first_stage = DiffusersVAE(pretrained_vae, vae_hub_id, allow_download)
            stored_scale = first_stage.scaling_factor
        elif autoencoder_ckpt and Path(autoencoder_ckpt).is_file():
            first_stage, stored_scale = load_autoencoder(autoencoder_ckpt)
        # else: missing weights are reported in setup(), before training (configs still instantiate)
        if first_stage is not None:
            sample_shape = sample_shape or self._latent_shape(first_stage, data_shape)
        if sample_shape is None:
            raise UserError("set model.sample_shape (the latent shape, e.g. [4, 8, 8]) or give an autoencoder")
        trainable_text = text_encoder is not None and getattr(text_encoder, "trainable", True)
        wrapped = TextConditionedNet(net, text_encoder if trainable_text else None)
        super().__init__(wrapped, *args, sample_shape=list(sample_shape), **kwargs)
        for key in ("text_encoder", "first_stage"):  # modules are not hyperparameters
            self.hparams.pop(key, None)
        self.autoencoder_ckpt, self.scale_override = autoencoder_ckpt, scale_factor
        self.pretrained_vae, self.vae_hub_id, self.allow_download = pretrained_vae, vae_hub_id, allow_download
        self.frozen_text_encoder = text_encoder if (text_encoder is not None and not trainable_text) else None
        self.text_conditional = text_encoder is not None
        self._data_shape = data_shape
        self.latent_sample, self.cache_latents, self.cache_batch_size = latent_sample, cache_latents, cache_batch_size
        self.default_prompts = list(default_prompts or [])
        self.register_buffer("scale_factor", torch.zeros(()))
        self._null_cache: dict[str, dict[str, Tensor]] = {}
        self.first_stage: nn.Module | None = None
        if first_stage is not None:
            self.attach_first_stage(first_stage, stored_scale)

    @staticmethod
    def _latent_shape(first_stage: nn.Module, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(first_stage.latent_shape(data_shape))
        except ValueError as e:
            raise UserError(f"the autoencoder does not fit the data: {e}; retrain it for this data or fix "
                            f"model.data_shape") from e

    def attach_first_stage(self, first_stage: nn.Module, stored_scale: float = 0.0) -> None:
        """Check that the autoencoder fits data and denoiser, freeze it and take its latent scale."""
        latent = self._latent_shape(first_stage, self.data_shape)
        in_ch = getattr(self.net.denoiser, "in_channels", latent[0])
        if tuple(self.sample_shape) != latent or in_ch != latent[0]:
            raise UserError(f"the autoencoder makes latents of shape {latent} from data {self.data_shape}, but the "
                            f"denoiser expects {tuple(self.sample_shape)} with {in_ch} input channels. Set "
                            f"model.sample_shape={list(latent)} (net.in_channels={latent[0]}) or use the matching "
                            f"autoencoder checkpoint")
        self.first_stage = first_stage.eval().requires_grad_(False)
        scale = self.scale_override if self.scale_override is not None else stored_scale
        self.scale_factor.fill_(float(scale or 0.0))

    # ----------------------------------------------------------------- properties
    @property
    def data_shape(self) -> tuple[int, ...]:
        """One item in data space (``sample_shape`` is the latent shape)."""
        return self._data_shape

    @property
    def text_encoder(self) -> nn.Module | None:
        return self.net.text_encoder if self.net.text_encoder is not None else self.frozen_text_encoder

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        if self.first_stage is not None:
            self.first_stage.eval()  # frozen first stage: never in training mode
        return self

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.first_stage is None:  # missing weights: a clear error before training
            if self.pretrained_vae:
                vae = DiffusersVAE(self.pretrained_vae, self.vae_hub_id, self.allow_download)
                self.attach_first_stage(vae, vae.scaling_factor)
            else:
                self.attach_first_stage(*load_autoencoder(self.autoencoder_ckpt))
        enc = self.text_encoder
        if hasattr(enc, "load"):
            enc.load()
        tok = getattr(enc, "tokenizer", None)
        if tok is not None and hasattr(tok, "fit") and not tok.is_fitted:
            dm = self.trainer.datamodule if self._trainer is not None else None
            corpus = dm.caption_corpus() if dm is not None and hasattr(dm, "caption_corpus") else None
            if corpus is None and dm is not None and getattr(dm, "train_set", None) is not None:
                corpus = dm.train_set.fields.get("text")
            if not corpus:
                raise UserError("the trainable text encoder needs a vocabulary: use a captioned datamodule "
                                "(data=captioned_mnist or data=caption_folder) or set model.text_encoder.tokenizer.vocab")
            self.fit_tokenizer(corpus)

    def fit_tokenizer(self, texts: Sequence[str]) -> None:
        """Build the word vocabulary (raw and EMA copies agree; it is saved in every checkpoint)."""
        self.net.text_encoder.tokenizer.fit(texts)
        if self.ema is not None:
            self.ema.shadow.text_encoder.tokenizer.fit(texts)
        self._null_cache.clear()

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if float(self.scale_factor) <= 0:
            if dm is None:
                raise UserError("the latent scale factor is unknown and there is no datamodule to estimate it from")
            images = scale_images_from(dm, 512).to(self.device)
            self.scale_factor.fill_(estimate_scale_factor(self.first_stage, images))
            log.info("estimated latent scale factor %.4f", float(self.scale_factor))
        if self.cache_latents and dm is not None and getattr(dm, "train_set", None) is not None:
            self._cache_training_latents(dm)

    def _cache_training_latents(self, dm: Any) -> None:
        from datamodules.base import map_train_inputs

        def moments(x: Tensor) -> Tensor:  # (mean, std) of q(z|x), stacked along channels
            post = self.first_stage.encode(x.to(self.device))
            return torch.cat([post.mean, post.std], 1)

        if map_train_inputs(dm, moments, self.cache_batch_size, self.data_shape):
            log.info("cached %d training latents", len(dm.train_set))

    # ----------------------------------------------------------------- hooks
    def _check_ready(self) -> None:
        if self.first_stage is None:
            raise UserError(f"no autoencoder is attached (weights {self.pretrained_vae or self.autoencoder_ckpt} were "
                            f"missing); {TRAIN_AE_HINT}")
        if float(self.scale_factor) <= 0:
            raise UserError("the latent scale factor is unknown: fit the model (it is estimated at the start of "
                            "training) or set model.scale_factor")

    def encode(self, x: Tensor) -> Tensor:
        self._check_ready()
        c = self.sample_shape[0]
        with torch.no_grad():
            if tuple(x.shape[1:]) == (2 * c, *self.sample_shape[1:]):  # cached (mean, std)
                mean, std = x.chunk(2, dim=1)
                z = mean + std * torch.randn_like(mean) if self.latent_sample else mean
            else:
                post = self.first_stage.encode(x)
                z = post.sample() if self.latent_sample else post.mode()
        return z * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        self._check_ready()
        with torch.no_grad():
            return self.first_stage.decode(z / self.scale_factor).clamp(-1, 1)

    def text_conditions(self, texts: Sequence[str]) -> dict[str, Tensor]:
        enc = self.text_encoder
        ids, mask = enc.tokenize(list(texts), self.device)
        if enc.trainable:
            return {"tokens": ids, "token_mask": mask}
        with torch.no_grad():
            out = {"context": enc(ids, mask)}
        if getattr(enc, "use_mask", False):
            out["context_mask"] = mask
        return out

    def net_conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        cond = super().net_conditions(batch)
        if self.text_conditional:
            if "text" not in batch:
                raise KeyError("this model is text-conditional but the batch has no 'text' (use a captioned datamodule)")
            cond.update(self.text_conditions(batch["text"]))
        return cond

    def _null_text(self, n: int) -> dict[str, Tensor]:
        key = str(self.device)
        if key not in self._null_cache or self._null_cache[key] is None:
            self._null_cache = {key: self.text_conditions([""])}  # one row, computed once per device
        return {k: v.expand(n, *v.shape[1:]) for k, v in self._null_cache[key].items()}

    def null_conditions(self, cond: dict[str, Any]) -> dict[str, Any] | None:
        text_keys = {"tokens", "token_mask", "context", "context_mask"} & set(cond)
        null = super().null_conditions(cond) if "y" in cond else (dict(cond) if text_keys else None)
        if text_keys:
            n = next(cond[k] for k in text_keys).shape[0]
            null.update(self._null_text(n))
        return null

    def drop_conditions(self, cond: dict[str, Any], keep: Tensor) -> dict[str, Any]:
        out = super().drop_conditions(cond, keep)
        null = self.null_conditions(cond)
        for k in ("tokens", "token_mask", "context", "context_mask"):
            if k in cond:
                m = keep.view(-1, *([1] * (cond[k].ndim - 1)))
                out[k] = torch.where(m, cond[k], null[k])
        return out

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, num: int, cond: dict[str, Any] | None = None, sampler: Any = None,
               generator: torch.Generator | None = None, guidance_scale: float | None = None,
               use_ema: bool = True, step_hook: Any = None, x_T: Tensor | None = None) -> Tensor:
        """As :meth:`DiffusionModule.sample`; ``cond`` may also hold ``text`` (a list of ``num`` prompts).
        A text model sampled without a condition cycles through ``default_prompts``."""
        cond = dict(cond or {})
        if self.text_conditional:
            texts = cond.pop("text", None)
            if texts is None and not {"tokens", "context"} & set(cond):
                prompts = self.default_prompts or [""]
                texts = [prompts[i % len(prompts)] for i in range(num)]
            if texts is not None:
                if len(texts) != num:
                    raise ValueError(f"got {len(texts)} prompts for {num} samples")
                cond.update(self.text_conditions(texts))
        return super().sample(num, cond, sampler, generator, guidance_scale, use_ema, step_hook, x_T)
