"""Draw video samples with the EMA weights and save them as GIFs, a PNG filmstrip and W&B videos."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from kakusan.images import image_grid

from .sample_logger import SampleLogger

log = logging.getLogger(__name__)


def _to_pil(frame: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def video_frames(clips: Tensor, nrow: int | None = None) -> list[np.ndarray]:
    """Clips ``(B, T, C, H, W)`` in [-1, 1] -> ``T`` uint8 grid images ``(H', W', C)`` (one per time step)."""
    if clips.ndim != 5:
        raise ValueError(f"expected video clips (B, T, C, H, W), got {tuple(clips.shape)}")
    return [image_grid(clips[:, t], nrow) for t in range(clips.shape[1])]


def save_gif(frames: list[np.ndarray], path: str | Path, fps: int = 4, scale: int = 2) -> Path:
    """Write uint8 frames ``(H, W, C)`` as a looping GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [_to_pil(f, scale) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return path


def save_filmstrip(clips: Tensor, path: str | Path, scale: int = 2) -> Path:
    """PNG with one row per clip and one column per frame (read frames without a GIF viewer)."""
    b, t = clips.shape[:2]
    grid = image_grid(clips.flatten(0, 1), nrow=t)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(grid, scale).save(path)
    return path


def save_video_samples(clips: Tensor, out_dir: str | Path, name: str, fps: int = 4, scale: int = 2,
                       per_sample: int = 8) -> dict[str, Path]:
    """``{name}_grid.gif`` (all clips side by side), ``{name}_filmstrip.png`` and
    ``{name}_XX.gif`` for the first ``per_sample`` clips, under ``out_dir``."""
    out = Path(out_dir)
    paths = {"grid_gif": save_gif(video_frames(clips), out / f"{name}_grid.gif", fps, scale),
             "filmstrip": save_filmstrip(clips, out / f"{name}_filmstrip.png", scale)}
    for i in range(min(per_sample, clips.shape[0])):
        paths[f"gif_{i}"] = save_gif(video_frames(clips[i:i + 1], 1), out / name / f"{i:02d}.gif", fps, scale)
    return paths


def wandb_video(clips: Tensor, gif_path: Path, fps: int) -> Any:
    """A ``wandb.Video`` of the grid: from the uint8 array ``(T, C, H, W)`` where W&B can encode it
    (needs moviepy), else from the GIF file already written (works offline without extras)."""
    import wandb

    frames = np.stack(video_frames(clips)).transpose(0, 3, 1, 2)
    try:
        import moviepy  # noqa: F401  (wandb encodes numpy video through moviepy)

        return wandb.Video(frames, fps=fps, format="gif")
    except ImportError:
        return wandb.Video(str(gif_path), format="gif")


class VideoLogger(SampleLogger):
    """Every ``every_n_epochs`` epochs and at the end of training, sample ``num_samples`` clips with
    a fixed ``seed`` and write ``samples/{epoch_XXX|final}_grid.gif``, ``..._filmstrip.png`` and
    per-clip GIFs; log the grid to W&B as a video when W&B is a logger."""

    def __init__(self, output_dir: str, every_n_epochs: int = 1, num_samples: int = 16, seed: int = 0,
                 sampler: Any = None, final_sampler: Any = None, fps: int = 4, scale: int = 2,
                 per_sample: int = 4, on_train_end: bool = True) -> None:
        # the schedule (epochs, end of training, pre-emption) is SampleLogger's; only _draw differs
        super().__init__(output_dir, every_n_epochs, num_samples, seed, sampler, final_sampler, scale, on_train_end)
        self.fps, self.per_sample = fps, per_sample
        self.last_paths: dict[str, Path] = {}

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, sampler: Any) -> dict[str, Path]:
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        clips = pl_module.sample(self.num_samples, sampler=sampler, generator=gen).cpu()
        paths = save_video_samples(clips, self.dir, name, self.fps, self.scale, self.per_sample)
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.log({"samples/video": wandb_video(clips, paths["grid_gif"], self.fps),
                                   "trainer/global_step": trainer.global_step})
                lg.log_image(key="samples/filmstrip", images=[str(paths["filmstrip"])], caption=[name],
                             step=trainer.global_step)
        self.last_paths = paths
        log.info("saved video samples to %s", paths["grid_gif"])
        return paths
