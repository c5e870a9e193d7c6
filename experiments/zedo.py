"""Zero-shot 3-D pose estimation with a diffusion prior (ZeDO): ``python -m experiments.zedo``.

    python -m experiments.train experiment=pose_prior_cmu            # the prior
    python -m experiments.zedo experiment=zedo_cmu ckpt_path=<run>/checkpoints/last.ckpt

Evaluates the prior on held-out poses seen through random cameras (or on a user keypoint file)
and writes ``zedo_results.csv``, ``zedo_results.md``, ``summary.json`` and ``figures/*.png`` into
the run folder.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.pose.h36m import load_keypoints_file
from datamodules.pose.plots import save_pose_figure
from kakusan.config_check import check_argv_or_exit
from kakusan.checkpoint import load_module
from kakusan.errors import UserError
from kakusan.manifest import write_manifest
from kakusan.run import hydra_overrides, metric_value, seed_everything, set_torch_threads, task_wrapper
from kakusan.summary import update_summary
from lightning_modules.zero_shot_pose import ZeroShotPoseEstimator, evaluate_methods

log = logging.getLogger("kakusan.zedo")
COLUMNS = ("S", "method", "selection", "mpjpe", "pa_mpjpe", "n_mpjpe", "pck150", "auc", "sec_per_pose")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_inputs(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    ev = cfg.evaluation
    if ev.get("keypoints_file"):
        f = load_keypoints_file(ev.keypoints_file)
        if "poses_3d" not in f:
            raise UserError(f"{ev.keypoints_file} has no poses_3d, so there is nothing to score against; add the "
                            f"camera-frame ground truth (N, 17, 3) in metres")
        t = {k: torch.from_numpy(v) for k, v in f.items()}
        gt = t["poses_3d"] - t["poses_3d"][:, :1]
        batch = {"x": gt, "cond": {k: t[k] for k in ("keypoints_2d", "confidence", "K")}}
    else:
        batch = dm.evaluation_batch()
    n = ev.get("num_poses")
    if n:
        batch = {"x": batch["x"][:n], "cond": {k: v[:n] for k, v in batch["cond"].items()}}
    return batch


def write_tables(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    with open(run_dir / "zedo_results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})
    lines = ["| S | method | selection | MPJPE (mm) | PA-MPJPE (mm) | N-MPJPE (mm) | PCK@150 (%) | AUC (%) | s / pose |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['S']} | {r['method']} | {r['selection']} | {r['mpjpe']:.1f} | {r['pa_mpjpe']:.1f} | "
                     f"{r['n_mpjpe']:.1f} | {r['pck150']:.1f} | {r['auc']:.1f} | {r['sec_per_pose']:.4f} |")
    (run_dir / "zedo_results.md").write_text("\n".join(lines) + "\n")


@task_wrapper
def run_zedo(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = seed_everything(cfg.get("seed"))
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.zedo")
    if not cfg.get("ckpt_path"):
        raise UserError("no prior checkpoint: pass ckpt_path=<run>/checkpoints/last.ckpt from "
                        "`python -m experiments.train experiment=pose_prior_cmu` (or experiment=zedo_h36m)")
    device = pick_device(cfg.get("device", "auto"))
    module, prior_cfg = load_module(cfg.ckpt_path, device)
    if tuple(module.sample_shape or ()) != (17, 3):
        raise UserError(f"{cfg.ckpt_path} is not a 17x3 pose prior (sample_shape {module.sample_shape})")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    batch = load_inputs(cfg, dm)
    ev = cfg.evaluation
    estimator = ZeroShotPoseEstimator(module, dm.train_poses, OmegaConf.to_container(cfg.zedo, resolve=True),
                                      cluster_seed=int(ev.cluster_seed))
    log.info("ZeDO on %d poses, S in %s, on %s", len(batch["x"]), list(ev.hypotheses), device)
    rows, raw = evaluate_methods(estimator, batch, list(ev.hypotheses), int(ev.seed), bool(ev.baselines))
    write_tables(run_dir, rows)
    log.info("\n%s", (run_dir / "zedo_results.md").read_text())

    s_max = max(ev.hypotheses)
    for i in range(min(int(ev.num_figures), len(batch["x"]))):
        est = {"ZeDO (reproj-selected)": _pick(raw[f"zedo_S{s_max}"], i)}
        if f"no_prior_S{s_max}" in raw:
            est["no prior"] = _pick(raw[f"no_prior_S{s_max}"], i)
        save_pose_figure(run_dir / "figures" / f"pose_{i:03d}.png", batch["cond"]["keypoints_2d"][i],
                         batch["x"][i], est, title=f"pose {i}, S={s_max}")
    summary: dict[str, Any] = {"status": "finished", "seed": seed, "num_poses": len(batch["x"]),
                               "ckpt_path": str(cfg.ckpt_path)}
    for r in rows:
        for k in ("mpjpe", "pa_mpjpe", "n_mpjpe", "pck150", "auc", "sec_per_pose"):
            summary[f"zedo/S{r['S']}/{r['method']}/{r['selection']}/{k}"] = r[k]
    return update_summary(run_dir, summary)


def _pick(out: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    return out["poses"][i, out["reprojection"][i].argmin()].cpu()


@hydra.main(version_base="1.3", config_path="../configs", config_name="zedo")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    return metric_value(run_zedo(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    check_argv_or_exit("zedo")
    main()
