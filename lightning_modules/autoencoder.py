"""Training the first stage of latent diffusion: a KL autoencoder, optionally with a patch GAN.

Loss (Rombach et al. 2022, App. G; Esser et al. 2021): pixel reconstruction (L1 or L2) plus a small
KL term towards ``N(0, I)``, and from ``disc_start`` a hinge patch-GAN loss whose weight is set
adaptively from gradient norms at the decoder's last layer. The latent scale factor
``1 / std(z)`` is estimated from training data at every validation epoch end, so every checkpoint
carries it (buffer ``scale_factor``; 0 means "not estimated yet").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor, nn

from kakusan.images import save_grid

from .nets.autoencoder import Autoencoder
from .nets.patch_discriminator import hinge_d_loss, hinge_g_loss

log = logging.getLogger(__name__)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak range 2, i.e. 8-bit convention)."""
    mse = (x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def estimate_scale_factor(autoencoder: Autoencoder, images: Tensor, batch_size: int = 128, seed: int = 0) -> float:
    """``1 / std`` of latent samples ``z ~ q(z|x)`` over ``images`` (as Stable Diffusion's 0.18215)."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    zs = [autoencoder.encode(images[i:i + batch_size]).sample(gen).float() for i in range(0, len(images), batch_size)]
    std = torch.cat(zs).flatten().std()
    if not torch.isfinite(std) or std <= 0:
        raise ValueError(f"cannot estimate the latent scale: latent std is {float(std)}")
    return float(1.0 / std)


def scale_images_from(datamodule: Any, num: int) -> Tensor:
    """Up to ``num`` training images spread evenly over the training split (fixed, no RNG)."""
    ds = getattr(datamodule, "train_set", None)
    if ds is not None and len(ds) > 0:
        idx = torch.linspace(0, len(ds) - 1, min(num, len(ds))).round().long().unique()
        return torch.stack([ds[int(i)]["x"] for i in idx])
    xs, n = [], 0
    for batch in datamodule.train_dataloader():
        xs.append(batch["x"])
        n += len(batch["x"])
        if n >= num:
            break
    return torch.cat(xs)[:num]


class AutoencoderModule(pl.LightningModule):
    """Args:
        autoencoder: the :class:`Autoencoder`.
        optimizer: partial building the autoencoder optimiser from parameters.
        discriminator: optional patch discriminator; turns on the GAN loss and manual optimisation.
        disc_optimizer: partial building the discriminator optimiser.
        rec_loss: ``l1`` or ``l2`` (per-pixel mean).
        kl_weight: weight of the KL term relative to the *summed* reconstruction loss, as in LDM
            (their 1e-6 means the same here; internally both are divided by the pixels per item).
        disc_start: autoencoder step from which the GAN loss is on.
        disc_weight: GAN loss weight (times the adaptive factor when ``adaptive_disc_weight``).
        scale_images: training images used to estimate the latent scale factor.
        output_dir: run folder; reconstructions go to ``samples/recon_epoch_XXX.png``.
        num_log_images: originals/reconstructions pairs per picture.
        data_shape: optional data item shape, checked against the datamodule before training.
    """

    def __init__(self, autoencoder: Autoencoder, optimizer: Callable, discriminator: nn.Module | None = None,
                 disc_optimizer: Callable | None = None, rec_loss: str = "l1", kl_weight: float = 1e-6,
                 disc_start: int = 0, disc_weight: float = 0.5, adaptive_disc_weight: bool = True,
                 scale_images: int = 512, output_dir: str | None = None, num_log_images: int = 16,
                 data_shape: list[int] | None = None) -> None:
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be l1 or l2, got {rec_loss!r}")
        if discriminator is not None and disc_optimizer is None:
            raise ValueError("a discriminator needs disc_optimizer")
        self.save_hyperparameters(ignore=["autoencoder", "discriminator", "optimizer", "disc_optimizer"], logger=False)
        self.autoencoder, self.discriminator = autoencoder, discriminator
        self.optimizer_factory, self.disc_optimizer_factory = optimizer, disc_optimizer
        self.rec_loss, self.kl_weight = rec_loss, kl_weight
        self.disc_start, self.disc_weight, self.adaptive_disc_weight = disc_start, disc_weight, adaptive_disc_weight
        self.scale_images, self.num_log_images = scale_images, num_log_images
        self.output_dir = Path(output_dir) if output_dir else None
        self.data_shape = tuple(data_shape) if data_shape else None
        self.automatic_optimization = discriminator is None
        self.register_buffer("scale_factor", torch.zeros(()))
        self.register_buffer("ae_steps", torch.zeros((), dtype=torch.long))
        self._val_pair: tuple[Tensor, Tensor] | None = None

    # ----------------------------------------------------------------- losses
    def _rec(self, rec: Tensor, x: Tensor) -> Tensor:
        return F.l1_loss(rec, x) if self.rec_loss == "l1" else F.mse_loss(rec, x)

    def ae_loss(self, x: Tensor, rec: Tensor, posterior) -> tuple[Tensor, dict[str, Tensor]]:
        rec_loss = self._rec(rec, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + self.kl_weight * kl
        logs = {"rec_loss": rec_loss.detach(), "kl": kl.detach() * x[0].numel()}
        if self.discriminator is not None and int(self.ae_steps) >= self.disc_start:
            g_loss = hinge_g_loss(self.discriminator(rec))
            weight = torch.tensor(self.disc_weight, device=x.device)
            if self.adaptive_disc_weight and self.training:
                last = self.autoencoder.last_layer_weight
                g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
                g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
                weight = weight * (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()
            loss = loss + weight * g_loss
            logs.update(g_loss=g_loss.detach(), disc_weight=weight)
        return loss, logs

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        x = batch["x"]
        rec, posterior = self.autoencoder(x)
        loss, logs = self.ae_loss(x, rec, posterior)
        if self.automatic_optimization:
            self.ae_steps += 1
        else:
            opt_ae, opt_d = self.optimizers()
            opt_ae.zero_grad()
            self.manual_backward(loss)
            opt_ae.step()
            if int(self.ae_steps) >= self.disc_start:
                d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(rec.detach()))
                opt_d.zero_grad()
                self.manual_backward(d_loss)
                opt_d.step()
                logs["d_loss"] = d_loss.detach()
            self.ae_steps += 1
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        for k, v in logs.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss if self.automatic_optimization else None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["x"]
        posterior = self.autoencoder.encode(x)
        rec = self.autoencoder.decode(posterior.mode())
        self.log("val/rec_loss", self._rec(rec, x), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(x))
        self.log("val/psnr", psnr(rec, x).mean(), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(x))
        self.log("val/loss", self._rec(rec, x) + self.kl_weight * posterior.kl().mean() / x[0].numel(),
                 on_epoch=True, sync_dist=True, batch_size=len(x))
        if batch_idx == 0:
            n = self.num_log_images
            self._val_pair = (x[:n].detach().cpu(), rec[:n].detach().cpu())
            val_set = getattr(self.trainer.datamodule, "val_set", None) if self._trainer is not None else None
            if val_set is not None and len(val_set) > n:  # spread over the split (all classes), fixed
                idx = torch.linspace(0, len(val_set) - 1, n).round().long()
                xs = torch.stack([val_set[int(i)]["x"] for i in idx]).to(self.device)
                self._val_pair = (xs.cpu(), self.reconstruct(xs).cpu())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        dm = self.trainer.datamodule
        if dm is not None:
            images = scale_images_from(dm, self.scale_images).to(self.device)
            self.scale_factor.fill_(estimate_scale_factor(self.autoencoder, images))
            self.log("scale_factor", self.scale_factor.item(), sync_dist=True)
        if self._val_pair is not None and self.trainer.is_global_zero:
            self.log_reconstructions(*self._val_pair, name=f"recon_epoch_{self.current_epoch:03d}")

    def log_reconstructions(self, x: Tensor, rec: Tensor, name: str) -> Path | None:
        """Originals (top row) above reconstructions (bottom row): PNG in ``samples/`` and W&B."""
        if self.output_dir is None:
            return None
        path = save_grid(torch.cat([x, rec]), self.output_dir / "samples" / f"{name}.png", nrow=len(x), scale=2)
        for lg in self.trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(key="reconstructions", images=[str(path)], caption=[name], step=self.global_step)
        return path

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=list(self.autoencoder.parameters()))
        if self.discriminator is None:
            return opt
        return [opt, self.disc_optimizer_factory(params=list(self.discriminator.parameters()))]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.autoencoder.decode(self.autoencoder.encode(x).mode())
