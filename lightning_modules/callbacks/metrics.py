"""Metric callbacks: FID/KID (and class accuracy) of EMA samples against the run's real data.

Evaluation is seeded: the same ``seed`` draws the same noise every time, so a change in the number
is a change in the model. Under DDP every rank draws ``num_samples / world_size`` samples (its own
seed stream), features are gathered with ``trainer.strategy.all_gather`` and every rank computes the
same number; rank 0 writes it to the loggers and ``summary.json``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from tqdm.auto import tqdm

from kakusan.errors import UserError
from kakusan.summary import update_summary
from lightning_modules.metrics.fid import (check_extractor, extract_features, feature_stats, frechet_distance,
                                           kernel_distance, prepare_extractor)
from lightning_modules.metrics.reference_stats import real_images, reference_stats

log = logging.getLogger(__name__)


def draw_samples(pl_module: Any, num: int, batch_size: int, seed: int, sampler: Any = None, offset: int = 0,
                 progress: bool = True, **sample_kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """``num`` seeded samples (CPU) in batches, and their class labels for class-conditional modules.

    ``offset`` shifts the label cycle (DDP shards); each batch has its own generator ``seed + batch``.
    ``sample_kwargs`` go to ``pl_module.sample`` (e.g. ``guidance_scale``, ``use_ema``).
    """
    num_classes = getattr(pl_module, "num_classes", None)
    xs, ys = [], []
    batches = range(0, num, batch_size)
    for b, start in enumerate(tqdm(batches, desc="sampling for metrics", disable=not progress, leave=False)):
        n = min(batch_size, num - start)
        gen = torch.Generator(device=pl_module.device).manual_seed(seed + b)
        cond = None
        if num_classes:
            y = (torch.arange(n) + offset + start) % num_classes
            cond = {"y": y.to(pl_module.device)}
            ys.append(y)
        xs.append(pl_module.sample(n, cond=cond, sampler=sampler, generator=gen, **sample_kwargs).float().cpu())
    return torch.cat(xs), (torch.cat(ys) if ys else None)


def report_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict[str, float], use_log: bool,
                   output_dir: str | None, extra: dict[str, Any] | None = None) -> None:
    """Send numbers to every logger (``pl_module.log`` inside epoch hooks, ``log_metrics`` elsewhere) and
    merge them into ``summary.json`` on rank 0. Values are identical on all ranks (no sync needed)."""
    if use_log:
        for k, v in values.items():
            pl_module.log(k, v, on_step=False, on_epoch=True, sync_dist=False)
    if not trainer.is_global_zero:
        return
    if not use_log:
        for lg in trainer.loggers:
            lg.log_metrics(values, step=trainer.global_step)
    out = output_dir or trainer.default_root_dir
    if out:
        update_summary(out, {**values, **(extra or {})})
    log.info("%s", ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


def dataset_name(datamodule: Any) -> str:
    return type(datamodule).__name__.removesuffix("DataModule").lower() or "data"


class ScheduledMetric(pl.Callback):
    """When a metric callback reports: every ``every_n_epochs`` validation epochs (0: never), at the end
    of training (``at_end``) and at test (``at_test``), never in a fast_dev_run's training. Subclasses set
    those three attributes and implement ``_report(trainer, pl_module, use_log)``."""

    every_n_epochs: int = 0
    at_end: bool = True
    at_test: bool = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._report(trainer, pl_module, use_log=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and not trainer.fast_dev_run:
            self._report(trainer, pl_module, use_log=False)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_test:
            self._report(trainer, pl_module, use_log=True)


class FIDCallback(ScheduledMetric):
    """FID-family numbers of samples every ``every_n_epochs`` epochs, at the end of training and at test.

    Args:
        extractor: ``digits`` (logs ``fid_digits``; MNIST-style data only) or ``inception``
            (logs ``fid_inception``, plus ``kid_inception`` when ``kid=True``).
        num_samples: samples per evaluation (all ranks together).
        real_split / real_num_samples: which real data (``datamodule.real_samples``); statistics are
            cached under ``<cache_dir>/fid_stats``.
        sampler: overrides the module's sampler (e.g. DDIM with few steps); ``seed``: evaluation seed.
        class_accuracy: for class-conditional digit models, also log ``class_accuracy`` of the samples.
        prefix: put before every key (e.g. ``val/``).
    """

    def __init__(self, extractor: str = "digits", num_samples: int = 1000, batch_size: int = 250,
                 every_n_epochs: int = 0, on_train_end: bool = True, on_test: bool = True, sampler: Any = None,
                 seed: int = 0, real_split: str = "train", real_num_samples: int | None = None, kid: bool = False,
                 class_accuracy: bool = True, cache_dir: str | None = None, output_dir: str | None = None,
                 prefix: str = "", feature_batch_size: int = 256) -> None:
        super().__init__()
        check_extractor(extractor)
        if num_samples < 2:
            raise UserError(f"FIDCallback needs num_samples >= 2, got {num_samples}")
        self.extractor, self.num_samples, self.batch_size = extractor, num_samples, batch_size
        self.every_n_epochs, self.at_end, self.at_test = every_n_epochs, on_train_end, on_test
        self.sampler, self.seed, self.kid, self.want_acc = sampler, seed, kid, class_accuracy
        self.real_split, self.real_num = real_split, real_num_samples
        self.cache_dir, self.output_dir, self.prefix = cache_dir, output_dir, prefix
        self.feature_batch_size = feature_batch_size
        self.name = f"fid_{extractor}"
        self._ref: dict[str, Any] | None = None
        self.last: dict[str, float] = {}

    # -------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "sample"):
            raise UserError(f"{type(self).__name__} needs a module with sample(); {type(pl_module).__name__} has none. "
                            f"Remove callbacks.{self.name} for this model.")
        prepare_extractor(self.extractor)  # missing weights fail here, before training

    def _reference(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self._ref is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "real_samples"):
                raise UserError(f"{type(self).__name__} needs a datamodule with real_samples(num, split)")
            real = real_images(dm, self.real_num, self.real_split)
            self._ref = reference_stats(real, self.extractor, self.cache_dir, dataset_name(dm), self.real_split,
                                        self.feature_batch_size, write=trainer.is_global_zero)
        return self._ref

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        world, rank = max(1, trainer.world_size), trainer.global_rank
        per_rank = math.ceil(self.num_samples / world)
        x, y = draw_samples(pl_module, per_rank, self.batch_size, self.seed + 1_000_003 * rank, self.sampler,
                            offset=rank * per_rank, progress=trainer.is_global_zero)
        feats = extract_features(x, self.extractor, self.feature_batch_size, pl_module.device)
        values: dict[str, float] = {}
        acc = None
        if self.want_acc and y is not None and self.extractor == "digits":
            from lightning_modules.metrics.digits_classifier import predict_digits

            acc = (predict_digits(x, device=pl_module.device) == y).float().sum().reshape(1)
        if world > 1:
            feats = trainer.strategy.all_gather(feats.to(pl_module.device)).reshape(-1, feats.shape[-1]).cpu()
            if acc is not None:
                acc = trainer.strategy.all_gather(acc.to(pl_module.device)).sum().cpu()
        feats = feats[: self.num_samples]
        ref = self._reference(trainer)
        values[self.prefix + self.name] = frechet_distance(*feature_stats(feats), ref["mu"], ref["sigma"])
        if self.kid:
            values[self.prefix + f"kid_{self.extractor}"] = kernel_distance(feats, ref["feats"], seed=self.seed)
        if acc is not None:
            values[self.prefix + "class_accuracy"] = float(acc.sum()) / (per_rank * world)
        self.last = values
        return values

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, use_log: bool) -> None:
        extra = {f"{self.prefix}{self.name}_num_samples": self.num_samples}
        report_metrics(trainer, pl_module, self.evaluate(trainer, pl_module), use_log, self.output_dir, extra)


def _default_prompts(trainer: pl.Trainer, num: int) -> list[str]:
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "prompts"):
        return list(dm.prompts(num))
    raise UserError("CLIPScoreCallback needs prompts: set callbacks.clip_score.prompts or give the datamodule "
                    "a prompts(num) method")


class CLIPScoreCallback(ScheduledMetric):
    """CLIP score (100 * mean max(cos, 0)) of text-conditioned samples against their prompts.

    ``model`` is an open_clip architecture name and ``pretrained`` a local checkpoint file / folder or an
    open_clip tag; weights are checked in ``setup`` (missing offline -> a clear error before training).
    The module must accept ``cond={"text": [...]}`` in ``sample``.
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k",
                 prompts: Sequence[str] | None = None, num_samples: int = 64, batch_size: int = 32,
                 every_n_epochs: int = 0, on_train_end: bool = True, on_test: bool = True, sampler: Any = None,
                 seed: int = 0, cache_dir: str | None = None, output_dir: str | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.model_name, self.pretrained, self.prompts = model, pretrained, list(prompts) if prompts else None
        self.num_samples, self.batch_size, self.every_n_epochs = num_samples, batch_size, every_n_epochs
        self.at_end, self.at_test, self.sampler, self.seed = on_train_end, on_test, sampler, seed
        self.cache_dir, self.output_dir, self.prefix = cache_dir, output_dir, prefix
        self.scorer = None
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_modules.metrics.clip_score import load_clip

        self.scorer = load_clip(self.model_name, self.pretrained, cache_dir=self.cache_dir)
        dm = getattr(trainer, "datamodule", None)
        if not self.prompts and not hasattr(dm, "prompts"):
            raise UserError("CLIPScoreCallback needs prompts: set callbacks.clip_score.prompts=[...] or use a "
                            "datamodule with a prompts(num) method")

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        world, rank = max(1, trainer.world_size), trainer.global_rank
        per_rank = math.ceil(self.num_samples / world)
        prompts = self.prompts or _default_prompts(trainer, self.num_samples)
        mine = [prompts[(rank * per_rank + i) % len(prompts)] for i in range(per_rank)]
        scores = []
        for b, start in enumerate(range(0, per_rank, self.batch_size)):
            texts = mine[start:start + self.batch_size]
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + 1_000_003 * rank + b)
            x = pl_module.sample(len(texts), cond={"text": texts}, sampler=self.sampler, generator=gen)
            scores.append(self.scorer.per_pair(x.float().cpu(), texts))
        s = torch.cat(scores)
        if world > 1:
            s = trainer.strategy.all_gather(s.to(pl_module.device)).reshape(-1).cpu()
        values = {self.prefix + "clip_score": float(s[: self.num_samples].mean())}
        self.last = values
        return values

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, use_log: bool) -> None:
        report_metrics(trainer, pl_module, self.evaluate(trainer, pl_module), use_log, self.output_dir,
                       {f"{self.prefix}clip_score_num_samples": self.num_samples})



class VideoMetricsCallback(ScheduledMetric):
    """Video numbers of EMA samples against real clips, at the end of training and at test.

    Logs (see :mod:`lightning_modules.metrics.video`) ``video/frame_fid_<fid_extractor>`` (every frame
    an image), ``video/temporal_change_fake`` / ``_real`` / ``_gap`` (mean absolute frame-to-frame
    change: flicker or freezing), with ``fid_extractor=digits`` also ``video/digit_consistency_fake`` /
    ``_real`` (the share of a clip's frames that keep its digit) and ``video/digit_agreement_next_*`` /
    ``_ends_*`` (labels agreeing between neighbouring frames / the first and last frame: unreadable
    glyphs against drift), ``video/digit_speed_*`` / ``video/digit_jerk_*`` (the digit's centre of
    mass: pixels moved per frame, and the change of that step, i.e. motion against freezing and
    smooth motion against jitter), ``video/class_accuracy`` for class-conditional models (frames showing
    the requested digit; ``video/class_accuracy_real``, real clips showing theirs, where the
    datamodule has ``real_labels``; both per requested digit in the run folder's
    ``video_by_class.md``), and ``video/fvd_<fvd_extractor>`` (``random3d``: a fixed random 3-D
    conv net, for comparing runs of this project; ``i3d``: the TorchScript I3D at ``i3d_path``, a
    clear error before training when the file is missing). ``None`` skips FID or FVD. Samples are
    seeded, so the same checkpoint gives the same numbers. Runs on rank 0 only.

    Args:
        num_samples: generated clips; ``real_num_samples`` real clips of ``real_split`` (default: as many).
        sampler: overrides the module's sampler (e.g. DDIM with fewer steps).
    """

    def __init__(self, num_samples: int = 128, batch_size: int = 64, fid_extractor: str | None = "digits",
                 fvd_extractor: str | None = "random3d", i3d_path: str | None = None, sampler: Any = None,
                 seed: int = 0, real_split: str = "val", real_num_samples: int | None = None,
                 every_n_epochs: int = 0, on_train_end: bool = True, on_test: bool = True,
                 cache_dir: str | None = None, output_dir: str | None = None) -> None:
        super().__init__()
        if num_samples < 2:
            raise UserError(f"VideoMetricsCallback needs num_samples >= 2, got {num_samples}")
        if fid_extractor is not None:
            check_extractor(fid_extractor)
        if fvd_extractor not in (None, "random3d", "i3d"):
            raise UserError(f"unknown FVD extractor {fvd_extractor!r}; choose random3d, i3d or null")
        self.num_samples, self.batch_size, self.seed, self.sampler = num_samples, batch_size, seed, sampler
        self.fid_extractor, self.fvd_extractor, self.i3d_path = fid_extractor, fvd_extractor, i3d_path
        self.real_split, self.real_num = real_split, real_num_samples or num_samples
        self.every_n_epochs, self.at_end, self.at_test = every_n_epochs, on_train_end, on_test
        self.cache_dir, self.output_dir = cache_dir, output_dir
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "sample"):
            raise UserError(f"VideoMetricsCallback needs a module with sample(); {type(pl_module).__name__} has none")
        if self.fid_extractor is not None:
            prepare_extractor(self.fid_extractor)
        if self.fvd_extractor == "i3d":
            from lightning_modules.metrics.video import resolve_i3d_path

            resolve_i3d_path(self.i3d_path, self.cache_dir)  # missing weights fail here, before training

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        from lightning_modules.metrics.video import save_class_table, video_scores

        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "real_samples"):
            raise UserError("VideoMetricsCallback needs a datamodule with real_samples(num, split)")
        real = dm.real_samples(self.real_num, self.real_split).float()
        fake, labels = draw_samples(pl_module, self.num_samples, self.batch_size, self.seed, self.sampler,
                                    progress=trainer.is_global_zero)
        real_labels = dm.real_labels(self.real_num, self.real_split) if (
            labels is not None and hasattr(dm, "real_labels")) else None
        self.last, by_class = video_scores(fake, real, self.fid_extractor, self.fvd_extractor, self.i3d_path,
                                           self.cache_dir, fake_labels=labels, real_labels=real_labels)
        if by_class is not None:  # which requested digits hold their shape
            save_class_table(self.output_dir or trainer.default_root_dir, by_class)
        return self.last

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, use_log: bool) -> None:
        if not trainer.is_global_zero:
            return  # sampling is rank 0's alone; the numbers go to rank 0's loggers and summary
        # log_metrics, not pl_module.log: only rank 0 has the numbers, and self.log would wait for the others
        report_metrics(trainer, pl_module, self.evaluate(trainer, pl_module), False, self.output_dir,
                       {"video/num_samples": self.num_samples})
