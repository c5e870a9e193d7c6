"""Evaluate a checkpoint: ``python -m experiments.evaluate ckpt_path=... [metrics=[...]] [num_samples=N] [seed=S]``.

Samples ``num_samples`` items with the EMA weights (seeded: the same seed gives the same numbers), compares
them with the real data of the checkpoint's own datamodule and writes ``summary.json``, ``manifest.json``
and ``samples/evaluate.png`` into this evaluation's run folder; the numbers also go to W&B.

Metrics: ``fid_digits`` (MNIST classifier features; digits only), ``fid_inception`` and ``kid_inception``
(clean-fid protocol), ``class_accuracy`` (class-conditional digit models; for clips, the share of frames
showing the requested digit), ``clip_score`` (text models), ``video`` (video models: every number of
:func:`lightning_modules.metrics.video.video_metrics`, i.e. frame FID, frame change, digit consistency,
agreement and motion, FVD; extractors under ``video.*``). A video checkpoint also gets GIFs and a
filmstrip of its first clips in ``samples/``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.sample import build_sampler, sampler_config
from kakusan.checkpoint import load_datamodule, load_module, read_checkpoint
from kakusan.config_check import check_argv_or_exit
from kakusan.errors import UserError
from kakusan.images import save_grid
from kakusan.manifest import write_manifest
from kakusan.run import hydra_overrides, resolved_config, seed_everything, set_torch_threads, task_wrapper
from kakusan.summary import update_summary
from kakusan.wandb_setup import configure_wandb_env, finish_wandb
from lightning_modules.callbacks.metrics import dataset_name, draw_samples
from lightning_modules.metrics.fid import (extract_features, feature_stats, frechet_distance, kernel_distance,
                                           prepare_extractor)
from lightning_modules.metrics.reference_stats import real_images, real_labels, reference_stats

log = logging.getLogger("kakusan.evaluate")
METRICS = ("fid_digits", "fid_inception", "kid_inception", "class_accuracy", "clip_score", "video")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_metrics(metrics: list[str]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserError(f"unknown metric(s) {unknown or '(none given)'}; choose from {', '.join(METRICS)}, "
                        f"e.g. metrics=[fid_digits,class_accuracy]")


def check_model_kind(module: Any, metrics: list[str]) -> None:
    """Image metrics need an image model and ``video`` a video model: say so before any sampling."""
    from lightning_modules.video_diffusion import VideoDiffusionModule

    is_video = isinstance(module, VideoDiffusionModule)
    if is_video and any(m.startswith(("fid_", "kid_")) for m in metrics):
        raise UserError("fid_*/kid_* compare images and this is a video model: use metrics=[video] (frame-wise "
                        "FID, FVD and the other video numbers), with class_accuracy for class-conditional clips")
    if not is_video and "video" in metrics:
        raise UserError(f"metrics=[video] needs a video model; {type(module).__name__} makes images")


def compute_metrics(cfg: DictConfig, module: Any, datamodule: Any, samples: torch.Tensor,
                    labels: torch.Tensor | None, device: torch.device) -> dict[str, Any]:
    metrics = list(cfg.metrics)
    out: dict[str, Any] = {}
    real = None
    if any(m.startswith(("fid_", "kid_")) for m in metrics):
        real = real_images(datamodule, cfg.real_num_samples, cfg.real_split)
    cache = cfg.paths.cache_dir
    for extractor in ("digits", "inception"):
        wanted = [m for m in metrics if m in (f"fid_{extractor}", f"kid_{extractor}")]
        if not wanted:
            continue
        t0 = time.perf_counter()
        ref = reference_stats(real, extractor, cache, dataset_name(datamodule), cfg.real_split,
                              cfg.feature_batch_size, device)
        feats = extract_features(samples, extractor, cfg.feature_batch_size, device)
        if f"fid_{extractor}" in wanted:
            out[f"fid_{extractor}"] = frechet_distance(*feature_stats(feats), ref["mu"], ref["sigma"])
        if f"kid_{extractor}" in wanted:
            out[f"kid_{extractor}"] = kernel_distance(feats, ref["feats"], cfg.kid_subsets, cfg.kid_subset_size,
                                                      seed=cfg.seed)
        out[f"time/{extractor}_s"] = round(time.perf_counter() - t0, 2)
        out[f"real_num_samples/{extractor}"] = int(len(ref["feats"]))
    if "class_accuracy" in metrics:
        if labels is None:
            log.warning("class_accuracy skipped: the model is not class-conditional")
        else:
            from lightning_modules.metrics.digits_classifier import class_accuracy

            if samples.ndim == 5:  # clips: every frame should show the clip's requested digit
                from lightning_modules.metrics.video import frame_class_accuracy

                out["class_accuracy"] = frame_class_accuracy(samples, labels)
            else:
                out["class_accuracy"] = class_accuracy(samples, labels, device=device)
    if "video" in metrics:
        out.update(video_numbers(cfg, datamodule, samples, labels))
    return out


def video_numbers(cfg: DictConfig, datamodule: Any, samples: torch.Tensor,
                  labels: torch.Tensor | None) -> dict[str, Any]:
    """:func:`video_metrics` of the sampled clips against real clips of the checkpoint's datamodule."""
    from lightning_modules.metrics.video import save_class_table, video_scores

    real = real_images(datamodule, cfg.real_num_samples, cfg.real_split).float()
    real_y = real_labels(datamodule, cfg.real_num_samples, cfg.real_split) if labels is not None else None
    t0 = time.perf_counter()
    numbers, by_class = video_scores(samples, real, cfg.video.fid_extractor, cfg.video.fvd_extractor,
                                     cfg.video.i3d_path, cfg.paths.cache_dir, fake_labels=labels, real_labels=real_y)
    out: dict[str, Any] = dict(numbers)
    if by_class is not None:  # which requested digits hold their shape
        out["video/by_class"] = by_class
        save_class_table(cfg.paths.output_dir, by_class)
    out["time/video_s"] = round(time.perf_counter() - t0, 2)
    out["real_num_samples/video"] = int(len(real))
    return out


def clip_score_of(cfg: DictConfig, module: Any, datamodule: Any, sampler: Any, device: torch.device) -> float:
    from lightning_modules.metrics.clip_score import load_clip

    scorer = load_clip(cfg.clip.model, cfg.clip.pretrained, cfg.paths.cache_dir, device)
    prompts = list(cfg.clip.prompts or (datamodule.prompts(cfg.num_samples) if hasattr(datamodule, "prompts") else []))
    if not prompts:
        raise UserError("clip_score needs prompts: set clip.prompts=[...] or use a datamodule with prompts(num)")
    scores = []
    for b, start in enumerate(range(0, cfg.num_samples, cfg.batch_size)):
        texts = [prompts[(start + i) % len(prompts)] for i in range(min(cfg.batch_size, cfg.num_samples - start))]
        gen = torch.Generator(device=device).manual_seed(cfg.seed + b)
        x = module.sample(len(texts), cond={"text": texts}, sampler=sampler, generator=gen)
        scores.append(scorer.per_pair(x.float().cpu(), texts))
    return float(torch.cat(scores).mean())


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("no checkpoint given: python -m experiments.evaluate ckpt_path=<run>/checkpoints/last.ckpt")
    metrics = list(cfg.metrics)
    _check_metrics(metrics)
    seed = seed_everything(cfg.seed)
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.evaluate",
                   extra={"ckpt_path": str(cfg.ckpt_path)})
    device = _device(cfg.device)
    for extractor in ("digits", "inception"):  # missing weights fail now, before any sampling
        if f"fid_{extractor}" in metrics or f"kid_{extractor}" in metrics or (
                extractor == "digits" and "class_accuracy" in metrics):
            prepare_extractor(extractor, device)
    if "video" in metrics:  # likewise the video extractors
        if cfg.video.fid_extractor:
            prepare_extractor(cfg.video.fid_extractor, device)
        if cfg.video.fvd_extractor == "i3d":
            from lightning_modules.metrics.video import resolve_i3d_path

            resolve_i3d_path(cfg.video.i3d_path, cfg.paths.cache_dir)
    module, mcfg = load_module(cfg.ckpt_path, device)
    check_model_kind(module, metrics)
    meta = read_checkpoint(cfg.ckpt_path).get("kakusan") or {}
    datamodule = load_datamodule(mcfg)
    trained = mcfg.model.get("sampler")
    sampler = build_sampler(cfg, module.schedule, trained) if hasattr(module, "schedule") else None

    wandb_run = None
    if cfg.wandb.enabled:
        configure_wandb_env()
        import wandb

        wandb_run = wandb.init(project=cfg.wandb.project, name=cfg.task_name, job_type="evaluate", dir=str(run_dir),
                               tags=list(cfg.tags), config={**resolved_config(cfg),
                                                            "training_wandb_run_id": meta.get("wandb_run_id")})
    ok = False
    try:
        t0 = time.perf_counter()
        values: dict[str, Any] = {}
        gen_metrics = [m for m in metrics if m != "clip_score"]
        if gen_metrics:
            samples, labels = draw_samples(module, cfg.num_samples, cfg.batch_size, cfg.seed, sampler,
                                           use_ema=cfg.use_ema, guidance_scale=cfg.guidance_scale)
            values["time/sampling_s"] = round(time.perf_counter() - t0, 2)
            if cfg.save_grid and samples.ndim == 4:
                nrow = getattr(module, "num_classes", None) or None
                save_grid(samples[: cfg.save_grid], run_dir / "samples" / "evaluate.png", nrow=nrow, scale=2)
            elif cfg.save_grid and samples.ndim == 5:
                from lightning_modules.callbacks.video_logger import save_video_samples

                save_video_samples(samples[: min(cfg.save_grid, 16)], run_dir / "samples", "evaluate", scale=3,
                                   per_sample=4)
            values.update(compute_metrics(cfg, module, datamodule, samples, labels, device))
        if "clip_score" in metrics:
            values["clip_score"] = clip_score_of(cfg, module, datamodule, sampler, device)
        values.update({"num_samples": cfg.num_samples, "seed": seed, "ckpt_path": str(cfg.ckpt_path),
                       "sampler": OmegaConf.to_container(sampler_config(cfg.get("sampler"), trained) or trained,
                                                         resolve=True) if trained is not None else None,
                       "time/total_s": round(time.perf_counter() - t0, 2), "status": "finished"})
        summary = update_summary(run_dir, values)
        if wandb_run is not None:
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            wandb_run.log(numbers)
            wandb_run.summary.update(numbers)
        log.info("evaluation: %s", {k: v for k, v in values.items() if k in METRICS})
        log.info("run folder: %s", run_dir)
        ok = True
        return summary
    finally:
        if wandb_run is not None:
            finish_wandb(exit_code=0 if ok else 1)  # never raises, never hides the real error


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    check_argv_or_exit("evaluate")
    main()
