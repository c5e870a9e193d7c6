"""Draw samples from a checkpoint: ``python -m experiments.sample ckpt_path=... [sampler=ddim sampler.steps=50]``.

Works for every model family whose module has ``sample(num, cond=None, sampler=None, generator=None, ...)``.
Writes into its own run folder: ``samples.png`` (image grid; video: frames of the first samples;
2-D points: ``scatter.png``), ``samples.npz`` (``samples`` float32 as returned, ``images`` uint8 NHWC
for images, ``labels`` int64 with -1 = unconditional), ``summary.json`` and ``manifest.json``.
Batch ``b`` is drawn with ``torch.Generator().manual_seed(seed + b)``: one seed, bit-identical samples.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from kakusan.checkpoint import load_module
from kakusan.config_check import check_argv_or_exit
from kakusan.errors import UserError
from kakusan.images import save_grid, scatter_png, to_uint8
from kakusan.manifest import write_manifest
from kakusan.run import hydra_overrides, seed_everything, set_torch_threads, task_wrapper
from kakusan.summary import update_summary

log = logging.getLogger("kakusan.sample")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


X0_KEYS = ("clip_x0", "clip_range", "dynamic_threshold", "dynamic_threshold_max")


def inherit_x0_settings(sampler_cfg: DictConfig, trained: DictConfig | None, prefix: str = "sampler") -> DictConfig:
    """Take the checkpoint sampler's x0 clipping/thresholding unless given on the command line.

    The sampler configs clip x0 to [-1, 1] (pixels); latent and pose models train with
    ``clip_x0: false``, and picking ``sampler=ddim`` must not silently clip their latents.
    """
    given = {o.split("=", 1)[0].lstrip("+~") for o in hydra_overrides()}
    out = OmegaConf.create(OmegaConf.to_container(sampler_cfg, resolve=True))
    for key in X0_KEYS:
        if trained is not None and key in trained and f"{prefix}.{key}" not in given:
            out[key] = trained[key]
    return out


def sampler_config(cfg_sampler: DictConfig | None, trained: DictConfig | None) -> DictConfig | None:
    """The sampler config a checkpoint is sampled with; None keeps the model's own sampler unchanged.

    - ``sampler=checkpoint`` (the default: every key null): the checkpoint's sampler, with the keys
      given on the command line changed (``sampler.steps=100``);
    - a named sampler (``sampler=ddim sampler.steps=50``): that one, with the checkpoint's x0 clipping
      unless given (:func:`inherit_x0_settings`).
    """
    if not cfg_sampler:
        return None
    if cfg_sampler.get("_target_") is None:
        changes = {k: v for k, v in OmegaConf.to_container(cfg_sampler, resolve=True).items() if v is not None}
        if not changes:
            return None
        if trained is None:
            raise UserError("this checkpoint stores no sampler to change; name one, e.g. sampler=ddim sampler.steps=50")
        return OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(trained, resolve=True)), changes)
    return inherit_x0_settings(cfg_sampler, trained)


def build_sampler(cfg: DictConfig, schedule: Any, trained: DictConfig | None = None) -> Any:
    """The sampler for ``cfg.sampler`` (see :func:`sampler_config`), validated against the model's schedule
    before any sampling; None for the model's own."""
    node = sampler_config(cfg.get("sampler"), trained)
    if node is None:
        return None
    try:
        sampler = hydra.utils.instantiate(node)
        sampler.validate(schedule)
    except (InstantiationException, ValueError) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        raise UserError(f"invalid sampler settings: {cause}") from e
    return sampler


def labels_for(module: Any, cfg: DictConfig) -> torch.Tensor | None:
    num_classes = getattr(module, "num_classes", None)
    if cfg.class_label is not None:
        if not num_classes:
            raise UserError("class_label is set but this model is not class-conditional (model.num_classes is null)")
        if not 0 <= int(cfg.class_label) < num_classes:
            raise UserError(f"class_label must lie in [0, {num_classes - 1}], got {cfg.class_label}")
        return torch.full((cfg.num_samples,), int(cfg.class_label), dtype=torch.long)
    return torch.arange(cfg.num_samples) % num_classes if num_classes else None


def prompts_for(module: Any, cfg: DictConfig) -> list[str] | None:
    """Text models: ``prompt`` (one string, or a list cycled over the samples); None: the module's default."""
    if cfg.get("prompt") is None:
        return None
    if not getattr(module, "text_conditional", False):
        raise UserError("prompt is set but this model is not text-conditional")
    items = [cfg.prompt] if isinstance(cfg.prompt, str) else list(cfg.prompt)
    return [str(items[i % len(items)]) for i in range(cfg.num_samples)]


def draw(module: Any, cfg: DictConfig, sampler: Any, labels: torch.Tensor | None, device: torch.device,
         prompts: list[str] | None = None) -> torch.Tensor:
    out = []
    starts = range(0, cfg.num_samples, cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="sampling batches", unit="batch")):
        n = min(cfg.batch_size, cfg.num_samples - start)
        gen = torch.Generator(device=device).manual_seed(int(cfg.seed) + b)
        cond = {"y": labels[start:start + n].to(device)} if labels is not None else {}
        if prompts is not None:
            cond["text"] = prompts[start:start + n]
        x = module.sample(n, cond=cond or None, sampler=sampler, generator=gen, guidance_scale=cfg.guidance_scale,
                          use_ema=cfg.use_ema)
        out.append(x.float().cpu())
    return torch.cat(out)


def save_outputs(x: torch.Tensor, labels: torch.Tensor | None, run_dir: Path, cfg: DictConfig,
                 num_classes: int | None) -> dict[str, str]:
    files: dict[str, Any] = {"samples": np.asarray(x.numpy(), dtype=np.float32),
                             "labels": (labels.numpy() if labels is not None else np.full(len(x), -1)).astype(np.int64)}
    written = {}
    if x.ndim == 4:  # images (B,C,H,W) in [-1, 1]
        files["images"] = to_uint8(x).permute(0, 2, 3, 1).numpy()
        nrow = cfg.nrow or (num_classes if num_classes and cfg.class_label is None and len(x) % num_classes == 0 else None)
        written["grid"] = str(save_grid(x, run_dir / "samples.png", nrow=nrow, scale=cfg.scale))
    elif x.ndim == 5:  # video (B,T,C,H,W): one row of frames per sample, first 8 samples
        files["images"] = to_uint8(x).permute(0, 1, 3, 4, 2).numpy()
        k = min(8, len(x))
        written["grid"] = str(save_grid(x[:k].flatten(0, 1), run_dir / "samples.png", nrow=x.shape[1], scale=cfg.scale))
    elif x.ndim == 2 and x.shape[1] == 2:  # 2-D points
        written["scatter"] = str(scatter_png(x, run_dir / "scatter.png", title=f"{len(x)} samples"))
    path = run_dir / "samples.npz"
    np.savez_compressed(path, **files)
    written["npz"] = str(path)
    return written


@task_wrapper
def sample(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise UserError(f"num_samples and batch_size must be >= 1, got {cfg.num_samples} and {cfg.batch_size}")
    seed = seed_everything(cfg.seed)
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.sample",
                   extra={"ckpt_path": str(cfg.ckpt_path)})
    device = pick_device(cfg.device)
    module, mcfg = load_module(cfg.ckpt_path, device)
    if not hasattr(module, "sample"):
        raise UserError(f"{type(module).__name__} has no sample() method: this checkpoint is not a generative model")
    trained = mcfg.model.get("sampler")
    sampler = build_sampler(cfg, module.schedule, trained) if hasattr(module, "schedule") else None
    labels = labels_for(module, cfg)
    prompts = prompts_for(module, cfg)
    t0 = time.perf_counter()
    x = draw(module, cfg, sampler, labels, device, prompts)
    seconds = time.perf_counter() - t0
    written = save_outputs(x, labels, run_dir, cfg, getattr(module, "num_classes", None))
    sampler_cfg = sampler_config(cfg.get("sampler"), trained) or trained
    summary = update_summary(run_dir, {
        "status": "finished", "seed": seed, "ckpt_path": str(cfg.ckpt_path), "num_samples": int(cfg.num_samples),
        "batch_size": int(cfg.batch_size), "shape": list(x.shape), "guidance_scale": cfg.guidance_scale,
        "class_label": cfg.class_label, "prompts": sorted(set(prompts)) if prompts else None, "use_ema": bool(cfg.use_ema), "device": str(device),
        "sampler": OmegaConf.to_container(sampler_cfg, resolve=True) if sampler_cfg is not None else None,
        "time/sampling_s": round(seconds, 3), "time/seconds_per_sample": round(seconds / len(x), 5),
        "files": written})
    log.info("%d samples in %.1fs -> %s", len(x), seconds, run_dir)
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    check_argv_or_exit("sample")
    main()
