"""Zero-shot 3-D pose estimation with a trained diffusion pose prior (ZeDO), and its evaluation.

The prior is a plain :class:`DiffusionModule` over ``(17, 3)`` poses (augmentation lives in the
datamodule, so no subclass is needed); :class:`ZeroShotPoseEstimator` wraps it with k-means initial
hypotheses and the :class:`ZeDO` loop, and :func:`evaluate_methods` scores ZeDO against two
baselines on the same inputs:

- ``cluster``: the initial cluster poses after the initial pose optimisation (rotation + depth);
  best-of-S is the nearest cluster pose;
- ``no_prior``: the same loop without the diffusion step (translation solve + rays only);
- ``zedo``: the full loop.

Each is reported for hypothesis selections ``single`` (hypothesis 0), ``mean`` (metric averaged
over the S hypotheses), ``best`` (per pose the hypothesis with the lowest MPJPE: minMPJPE, an
oracle) and ``reproj`` (per pose the hypothesis with the lowest 2-D reprojection error: no oracle).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from .diffusion.pose_optimization import ZeDO, cluster_poses
from .diffusion_module import DiffusionModule
from .metrics.pose import mpjpe, pose_metrics

METHODS = ("cluster", "no_prior", "zedo")
SELECTIONS = ("single", "mean", "best", "reproj")


class ZeroShotPoseEstimator:
    """``estimator(keypoints_2d, K, confidence, num_hypotheses)`` -> ZeDO outputs (see :class:`ZeDO`).

    Args:
        module: the trained prior (its EMA weights are used).
        train_poses: root-relative training poses ``(N, 17, 3)`` for the k-means hypotheses.
        zedo: keyword arguments of :class:`ZeDO` (iterations, noise range, IPO settings, ...).
        cluster_seed: seed of k-means.
    """

    def __init__(self, module: DiffusionModule | None, train_poses: Tensor, zedo: dict[str, Any] | None = None,
                 cluster_seed: int = 0) -> None:
        self.module, self.train_poses = module, train_poses
        self.zedo_kwargs, self.cluster_seed = dict(zedo or {}), cluster_seed
        self._clusters: dict[int, Tensor] = {}

    def clusters(self, num: int) -> Tensor:
        if num not in self._clusters:
            self._clusters[num] = cluster_poses(self.train_poses, num, self.cluster_seed)
        return self._clusters[num]

    def optimiser(self, use_prior: bool = True) -> ZeDO:
        m = self.module
        if use_prior and m is None:
            raise ValueError("the ZeDO loop with the prior needs a trained module")
        denoiser = (lambda x, t: m.denoiser(x, t)) if use_prior else None
        return ZeDO(denoiser, m.schedule if use_prior else None, m.prediction_type if use_prior else "eps",
                    **self.zedo_kwargs)

    @torch.no_grad()
    def __call__(self, keypoints_2d: Tensor, K: Tensor, confidence: Tensor | None = None, num_hypotheses: int = 1,
                 use_prior: bool = True, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        device = self.module.device if self.module is not None else keypoints_2d.device
        init = self.clusters(num_hypotheses).to(device)
        opt = self.optimiser(use_prior)
        args = [keypoints_2d.to(device), K.to(device), init, None if confidence is None else confidence.to(device)]
        if self.module is not None and use_prior:
            was_training = self.module.training
            self.module.eval()
            try:
                with self.module.ema_scope(self.module.ema is not None):
                    return opt(*args, generator=generator)
            finally:
                self.module.train(was_training)
        return opt(*args, generator=generator)


def select(poses: Tensor, gt: Tensor, reproj: Tensor, how: str) -> Tensor:
    """Pick one hypothesis per pose from ``(B, S, J, 3)``: ``single``, ``best`` (min MPJPE) or ``reproj``."""
    idx = torch.arange(poses.shape[0], device=poses.device)
    if how == "single":
        return poses[:, 0]
    if how == "best":
        err = torch.stack([mpjpe(poses[:, s], gt) for s in range(poses.shape[1])], 1)
        return poses[idx, err.argmin(1)]
    if how == "reproj":
        return poses[idx, reproj.argmin(1)]
    raise ValueError(f"unknown selection {how!r}")


def score(poses: Tensor, gt: Tensor, reproj: Tensor, joints: list[int] | None = None) -> dict[str, dict[str, float]]:
    """Metrics (mm, %) of ``(B, S, J, 3)`` hypotheses for every selection rule."""
    out: dict[str, dict[str, float]] = {}
    gt = gt.to(poses)
    for how in SELECTIONS:
        if how == "mean":
            per = [score_one(poses[:, s], gt, joints) for s in range(poses.shape[1])]
            out[how] = {k: sum(p[k] for p in per) / len(per) for k in per[0]}
        else:
            out[how] = score_one(select(poses, gt, reproj, how), gt, joints)
    return out


def score_one(pred: Tensor, gt: Tensor, joints: list[int] | None = None) -> dict[str, float]:
    metrics = pose_metrics(joints)
    vals = {}
    for name, m in metrics.items():
        m.update(pred.cpu(), gt.cpu())
        vals[name] = float(m.compute())
    return vals


def evaluate_methods(estimator: ZeroShotPoseEstimator, batch: dict[str, Any], hypotheses: list[int],
                     seed: int = 0, baselines: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every method for every S in ``hypotheses``; returns table rows and the raw estimates."""
    cond, gt = batch["cond"], batch["x"]
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    n = gt.shape[0]
    for s in hypotheses:
        runs = {}
        for use_prior in ((False, True) if baselines else (True,)):
            gen = torch.Generator(device=estimator.module.device if estimator.module is not None else "cpu").manual_seed(seed)
            t0 = time.perf_counter()
            out = estimator(cond["keypoints_2d"], cond["K"], cond.get("confidence"), s, use_prior, gen)
            runs["zedo" if use_prior else "no_prior"] = (out, (time.perf_counter() - t0) / n)
        if baselines:
            nop, secs = runs["no_prior"]
            runs["cluster"] = ({"poses": nop["init"], "reprojection": nop["reprojection"]}, 0.0)
        for method in METHODS:
            if method not in runs:
                continue
            out, secs = runs[method]
            raw[f"{method}_S{s}"] = out
            for how, vals in score(out["poses"], gt, out["reprojection"]).items():
                if method == "cluster" and how == "reproj":
                    continue  # the placed cluster poses are not fitted to the 2-D joints
                rows.append({"S": s, "method": method, "selection": how, **vals, "sec_per_pose": secs})
    return rows, raw
