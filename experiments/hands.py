"""Two-stage hands: ``python -m experiments.hands stage1_ckpt=... stage2_ckpt=... [hands_ablation=NAME]``.

Samples the whole chain (stage-1 hand + mask, placement, stage-2 outpainting with the chosen blend)
from the keypoints and labels of real photos, then writes into the run folder:

- ``summary.json``: ``seam_score`` (mean gradient magnitude over one band around the hand mask,
  ``metrics.seam_radii``, that holds every blend's cut) with the real photos' ``seam_real`` over the
  same band around their own hands, and the ratio; ``mpjpe_px`` (keypoint
  regressor on the generated frames vs the conditioning keypoints, pixels) with the regressor's own
  error on the real photos (``mpjpe_real_px``, the floor); ``fid_inception`` against the real photos
  of the split (few images: compare runs, not papers) and ``fid_handpose`` (Fréchet distance in the
  regressor's 128-d features, a cheap hand-specific number);
- ``figure.png``: rows = keypoints, stage-1 hand, stage-1 mask, then the final frame of each blend
  (one_stage, paste, expansion) on the same hands and seeds, then the real photo;
- ``stage2_sees_hand=false`` (the ``*_blind`` ablations) gives stage 2 pose and label only, so the
  hand joins the frame through the blend alone: the setting where blending has all the work to do;
- in a multirun, ``ablation_table.csv`` / ``.md`` in the sweep folder, over every finished job.
"""
from __future__ import annotations

import csv
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from kakusan.config_check import check_argv_or_exit
from kakusan.checkpoint import load_module, read_checkpoint, checkpoint_config
from kakusan.errors import UserError
from kakusan.images import image_grid
from kakusan.manifest import write_manifest
from kakusan.run import hydra_overrides, is_multirun, resolved_config, seed_everything, set_torch_threads, task_wrapper
from kakusan.summary import update_summary
from kakusan.wandb_setup import configure_wandb_env
from lightning_modules.diffusion.mask_expansion import ExpansionSchedule
from lightning_modules.hand_pipeline import HandTwoStagePipeline
from lightning_modules.metrics.hand_seam import seam_score

log = logging.getLogger("kakusan.hands")
TABLE_KEYS = ("ablation", "stage2_sees_hand", "seam_score", "seam_real", "seam_ratio", "mpjpe_px", "mpjpe_real_px",
              "fid_inception", "fid_handpose", "num_samples")
FIGURE_BLENDS = ("one_stage", "paste", "expansion")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generate(pipe: HandTwoStagePipeline, kp: torch.Tensor, y: torch.Tensor, blend: str, sched: ExpansionSchedule,
             batch_size: int, seed: int, hands: list | None = None, stage2_sees_hand: bool = True,
             paste_radius: int = 0) -> tuple[dict[str, torch.Tensor], list]:
    """Run the pipeline in batches (batch ``b`` uses seed ``seed + 10 b``); returns stacked outputs and the hands."""
    outs: dict[str, list[torch.Tensor]] = {}
    new_hands = []
    for b, s in enumerate(range(0, len(kp), batch_size)):
        o = pipe(kp[s:s + batch_size], y[s:s + batch_size], blend, sched, seed=seed + 10 * b,
                 hands=hands[b] if hands else None, stage2_sees_hand=stage2_sees_hand, paste_radius=paste_radius)
        new_hands.append((o.hand_rgb, o.hand_mask) if o.hand_rgb is not None else None)
        for k in ("final", "keypoint_map", "hand_rgb", "hand_mask", "mask", "composite_mask"):
            v = getattr(o, k)
            if v is not None:
                outs.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in outs.items()}, new_hands


def final_cut(cfg: DictConfig, sched: ExpansionSchedule, blend: str) -> int | None:
    """Radius of the blend's last mask around the hand: ``paste_radius`` for paste, ``r_end`` for the
    expansion and the fixed mask; None for one stage, which has no cut."""
    if blend == "one_stage":
        return None
    return sched.r_end if blend in ("expansion", "fixed") else int(cfg.paste_radius)


def seam_band_radii(cfg: DictConfig, sched: ExpansionSchedule, blend: str) -> tuple[int, int]:
    """``metrics.seam_radii`` as ``(lo, hi)``: one band for every job of an ablation, so their scores are
    over the same pixels. It must hold this blend's :func:`final_cut` (one stage has none: the band only
    says where to look, around the real photo's hand)."""
    lo, hi = (int(r) for r in cfg.metrics.seam_radii)
    cut = final_cut(cfg, sched, blend)
    if cut is not None and not lo <= cut <= hi:
        raise UserError(f"metrics.seam_radii={[lo, hi]} does not contain the {blend} blend's cut at radius {cut}; "
                        f"widen it (the same band for every job keeps their seam scores comparable)")
    return lo, hi


@lru_cache(maxsize=4)
def _pose_model(path: str, device: str):
    return load_module(path, device)[0]


@lru_cache(maxsize=4)
def _inception_real(key: str, real: Any) -> Any:  # keyed by the split; the tensor rides along
    from lightning_modules.metrics.fid import extract_features, feature_stats

    return feature_stats(extract_features(real, "inception"))


def hand_metrics(cfg: DictConfig, pipe: HandTwoStagePipeline, gen: dict[str, torch.Tensor], real: dict[str, Any],
                 band: tuple[int, int], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"num_samples": int(len(gen["final"]))}
    final, x_real = gen["final"], real["x"]
    real_mask = real["cond"]["mask"]
    # One band for every blend (metrics.seam_radii, widened by seam_width): each blend cuts somewhere
    # inside it, so paste, fixed and expansion are scored over the same pixels of the same hands, and
    # the real photos over the same band around their own hand masks.
    hand = gen.get("mask", real_mask)  # one_stage: the real photo's hand as the place to look
    w = int(cfg.metrics.seam_width)
    out["seam_score"] = float(seam_score(final, hand, w, radii=band))
    out["seam_real"] = float(seam_score(x_real, real_mask, w, radii=band))
    out["seam_ratio"] = out["seam_score"] / max(out["seam_real"], 1e-12)
    out["seam_band"] = list(band)
    if cfg.pose_ckpt:
        from lightning_modules.metrics.fid import feature_stats, frechet_distance
        from lightning_modules.metrics.hand_pose import mpjpe_px, predict_keypoints

        reg = _pose_model(str(cfg.pose_ckpt), str(device))
        kp_gen, f_gen = predict_keypoints(reg, final)
        kp_real, f_real = predict_keypoints(reg, x_real)
        target = real["cond"]["keypoints"]
        size = final.shape[-1]
        out["mpjpe_px"] = float(mpjpe_px(kp_gen, target, size))
        out["mpjpe_real_px"] = float(mpjpe_px(kp_real, target, size))
        out["fid_handpose"] = frechet_distance(*feature_stats(f_gen), *feature_stats(f_real))
    if cfg.metrics.fid_extractor == "inception":
        from lightning_modules.metrics.fid import extract_features, feature_stats, frechet_distance

        try:
            ref = _inception_real(f"{cfg.stage2_ckpt}:{cfg.split}:{len(x_real)}", x_real)
            out["fid_inception"] = frechet_distance(*feature_stats(extract_features(final, "inception")), *ref)
        except UserError as e:  # weights missing: say so instead of failing the whole evaluation
            log.warning("fid_inception skipped: %s", e)
            out["fid_inception_error"] = str(e)
    return out


def figure(pipe: HandTwoStagePipeline, cfg: DictConfig, real: dict[str, Any], sched: ExpansionSchedule,
           path: Path) -> Path:
    """Rows: keypoints | stage-1 hand | stage-1 mask | one_stage | paste | expansion | real photo."""
    n = min(int(cfg.figure.num), len(real["x"]))
    kp, y = real["cond"]["keypoints"][:n], real["y"][:n]
    gens = {}
    hands = None
    for blend in FIGURE_BLENDS[1:]:
        gens[blend], hands = generate(pipe, kp, y, blend, sched, n, cfg.seed, hands, bool(cfg.stage2_sees_hand),
                                      int(cfg.paste_radius))
    gens["one_stage"], _ = generate(pipe, kp, y, "one_stage", sched, n, cfg.seed)
    g = gens["expansion"]
    s = g["final"].shape[-1]
    resize = lambda t: torch.nn.functional.interpolate(t, size=(s, s), mode="nearest")  # noqa: E731
    kmap = g["keypoint_map"].amax(1, keepdim=True).repeat(1, 3, 1, 1) * 2 - 1
    rows = [kmap, resize(g["hand_rgb"]), resize(g["hand_mask"]).repeat(1, 3, 1, 1) * 2 - 1,
            gens["one_stage"]["final"], gens["paste"]["final"], g["final"], real["x"][:n]]
    grid = image_grid(torch.cat(rows), nrow=n)
    img = Image.fromarray(grid)
    img = img.resize((img.width * cfg.figure.scale, img.height * cfg.figure.scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_ablation_table(folder: Path) -> Path | None:
    """Aggregate ``*/summary.json`` under ``folder`` into ``ablation_table.csv`` and ``.md``."""
    rows = []
    for p in sorted(folder.glob("*/summary.json")):
        s = json.loads(p.read_text())
        if s.get("status") == "finished" and "ablation" in s:
            rows.append({k: s.get(k, "") for k in TABLE_KEYS})
    if not rows:
        return None
    with open(folder / "ablation_table.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=TABLE_KEYS)
        wr.writeheader()
        wr.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(TABLE_KEYS) + " |", "|" + "---|" * len(TABLE_KEYS)]
    md += ["| " + " | ".join(fmt(r[k]) for k in TABLE_KEYS) + " |" for r in rows]
    (folder / "ablation_table.md").write_text("\n".join(md) + "\n")
    return folder / "ablation_table.md"


@task_wrapper
def run_hands(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    seed = seed_everything(cfg.seed)
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.hands")
    device = _device(cfg.device)
    sampler = hydra.utils.instantiate(cfg.sampler)
    pipe = HandTwoStagePipeline.from_checkpoints(cfg.stage1_ckpt, cfg.stage2_ckpt, cfg.one_stage_ckpt, device, sampler)
    data_cfg = checkpoint_config(read_checkpoint(cfg.stage2_ckpt), cfg.stage2_ckpt).data
    dm = hydra.utils.instantiate(data_cfg, view="frame")
    real = dm.real_batch(int(cfg.num_samples), cfg.split)
    sched = ExpansionSchedule(**cfg.expansion)
    blend = str(cfg.blend)
    band = seam_band_radii(cfg, sched, blend)  # a band that misses this blend's cut fails before any sampling
    log.info("ablation %s: %d samples, blend %s, final cut at radius %s", cfg.hands_ablation.name, len(real["x"]),
             blend, final_cut(cfg, sched, blend))
    sees = bool(cfg.stage2_sees_hand) and blend != "one_stage"  # the one-stage frame never sees a hand
    gen, _ = generate(pipe, real["cond"]["keypoints"], real["y"], blend, sched, int(cfg.batch_size), cfg.seed,
                      stage2_sees_hand=sees, paste_radius=int(cfg.paste_radius))
    values = {"ablation": str(cfg.hands_ablation.name), "blend": blend, "stage2_sees_hand": sees, "seed": seed,
              **hand_metrics(cfg, pipe, gen, real, band, device)}
    fig = figure(pipe, cfg, real, sched, run_dir / "figure.png")
    values["figure"] = str(fig)
    if cfg.wandb.enabled:
        configure_wandb_env()
        import wandb

        run = wandb.init(project=cfg.wandb.project, name=f"{cfg.task_name}-{values['ablation']}", job_type="hands",
                         dir=str(run_dir), tags=list(cfg.tags), config=resolved_config(cfg), reinit=True)
        run.log({**{k: v for k, v in values.items() if isinstance(v, (int, float))}, "figure": wandb.Image(str(fig))})
        run.finish()
    summary = update_summary(run_dir, {**values, "status": "finished"})
    if is_multirun():
        table = write_ablation_table(run_dir.parent)
        log.info("ablation table: %s", table)
    log.info("run folder: %s\n%s", run_dir, json.dumps({k: summary.get(k) for k in TABLE_KEYS}, indent=1))
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="hands")
def main(cfg: DictConfig) -> None:
    run_hands(cfg)


if __name__ == "__main__":
    check_argv_or_exit("hands")
    main()
