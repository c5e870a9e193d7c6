"""ZeDO: zero-shot 2D->3D human pose estimation by optimisation with a diffusion pose prior.

Jiang et al., "Back to Optimization: Diffusion-based Zero-Shot 3D Human Pose Estimation", WACV 2024
(arXiv 2307.03833). Written from the paper and from reading the authors' release; vectorised over
a batch of B observed poses and S hypotheses (B*S rows).

1. **Initial hypotheses**: S k-means centres of the training poses (root-relative; here first
   turned to face +z so that a centre is a pose, not a blur over facing directions). Hypothesis s
   of every input starts from centre s.
2. **Initial pose optimisation (IPO)**: per row, a rotation about the vertical (camera y) axis and
   a scale of the translation ``T = scale * depth0 * ray(root)`` (scale clamped to
   ``ipo_scale_range``), fitted by Adam to the confidence-weighted L1 reprojection error (pixels)
   of ``ipo_joints`` (pelvis and hips in the paper).
3. **Optimisation loop**, ``iterations`` times: (a) re-solve the translation in closed form (after
   the first ``fixed_translation_fraction`` of the iterations, as the released code does): the
   ``T`` minimising ``sum_j w_j |(I - r_j r_j^T)(X_j + T)|^2`` over unit back-projected rays
   ``r_j`` with weights ``w_j = confidence_j ** conf_power``; (b) move every joint onto its ray
   (closest point, step ``min(confidence, 1)``); (c) re-centre on the pelvis and take one reverse
   diffusion step with the prior at a noise level falling from ``t_start`` to ``t_end``.

**Noise-level mapping.** The paper's prior is a continuous sub-VP SDE (beta 0.1..20) swept from
t=0.1 to t=0.01. With a discrete DDPM prior each continuous time ``t`` is mapped to the discrete
timestep whose signal-to-noise ratio ``abar_k / (1 - abar_k)`` is nearest (in log) to the SDE's
``m(t)^2 / sigma(t)^2`` (``sde_match: subvp`` for the paper's noise levels, ``vp`` for the VP
SDE, of which the linear DDPM schedule is the discretisation, so ``vp`` gives k ~ t*T). The
reverse step is a deterministic DDIM step ``k -> k - step_size`` (the paper takes one
probability-flow Euler step); ``stochastic: true`` draws an ancestral DDPM step instead.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from datamodules.base import DataError
from datamodules.pose.camera import back_project, check_intrinsics, project
from datamodules.pose.skeleton import facing_angle, rotate_vertical
from .parameterization import to_x0_eps
from .schedule import NoiseSchedule

DenoiserFn = Callable[[Tensor, Tensor], Tensor]


def cluster_poses(poses: Tensor, num_clusters: int, seed: int = 0, canonical_facing: bool = True,
                  max_poses: int = 20000) -> Tensor:
    """``num_clusters`` k-means centres ``(S, J, 3)`` of root-relative poses (sklearn KMeans, seeded)."""
    from sklearn.cluster import KMeans

    x = poses.detach().cpu().double()
    if canonical_facing:
        x = rotate_vertical(x, -facing_angle(x))
    if len(x) > max_poses:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_poses]]
    if num_clusters > len(x):
        raise DataError(f"cannot make {num_clusters} initial hypotheses from {len(x)} training poses")
    km = KMeans(n_clusters=num_clusters, random_state=seed, n_init=4).fit(x.reshape(len(x), -1).numpy())
    centres = torch.from_numpy(km.cluster_centers_).reshape(num_clusters, *poses.shape[1:])
    return (centres - centres[:, :1]).to(poses.dtype)


def sde_log_snr(t: Tensor, sde: str = "subvp", beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """log(m(t)^2 / sigma(t)^2) of the VP / sub-VP SDE of Song et al. 2021 at continuous time ``t``."""
    B = beta_min * t + 0.5 * (beta_max - beta_min) * t ** 2   # integral of beta over [0, t]
    if sde == "vp":
        var = -torch.expm1(-B)
    elif sde == "subvp":
        var = torch.expm1(-B) ** 2
    else:
        raise ValueError(f"unknown SDE {sde!r}; choose vp or subvp")
    return -B - torch.log(var)


def noise_level_timesteps(schedule: NoiseSchedule, t_cont: Tensor, sde: str = "subvp",
                          beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """Discrete timesteps whose log-SNR is nearest to the continuous SDE's at ``t_cont``."""
    abar = schedule.alphas_cumprod64.cpu()
    log_snr_d = torch.log(abar) - torch.log1p(-abar)
    target = sde_log_snr(t_cont.double(), sde, beta_min, beta_max)
    return (log_snr_d[None] - target[:, None]).abs().argmin(-1)


def solve_translation(X: Tensor, rays: Tensor, w: Tensor, T_prev: Tensor | None = None, ridge: float = 1e-9) -> Tensor:
    """Closed-form ``T`` (N, 3) minimising ``sum_j w_j |(I - r_j r_j^T)(X_j + T)|^2`` for poses X (N, J, 3)."""
    P = torch.eye(3, dtype=X.dtype, device=X.device) - rays[..., :, None] * rays[..., None, :]   # (N, J, 3, 3)
    A = (w[..., None, None] * P).sum(1)
    b = -(w[..., None, None] * P @ X[..., None]).sum(1)[..., 0]
    lam = ridge * A.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1e-12)
    prev = T_prev if T_prev is not None else torch.zeros_like(b)
    A = A + lam[:, None, None] * torch.eye(3, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(A, b + lam[:, None] * prev)


def move_to_rays(X: Tensor, T: Tensor, rays: Tensor, step: Tensor) -> Tensor:
    """Move each joint of ``X + T`` towards the closest point on its ray by ``step`` (N, J) in [0, 1]."""
    Y = X + T[:, None]
    closest = (Y * rays).sum(-1, keepdim=True) * rays
    return X + step[..., None] * (closest - Y)


def prepare_inputs(keypoints_2d: Tensor, confidence: Tensor | None, K: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate 2-D inputs: NaN joints get confidence 0; all-zero confidence or bad K raise DataError."""
    if keypoints_2d.ndim != 3 or keypoints_2d.shape[-1] != 2:
        raise DataError(f"keypoints_2d must be (B, J, 2), got {tuple(keypoints_2d.shape)}")
    b, j = keypoints_2d.shape[:2]
    conf = torch.ones(b, j, dtype=keypoints_2d.dtype, device=keypoints_2d.device) if confidence is None else confidence
    if conf.shape != (b, j):
        raise DataError(f"confidence must be (B, J) = ({b}, {j}), got {tuple(conf.shape)}")
    missing = ~torch.isfinite(keypoints_2d).all(-1)
    conf = torch.where(missing | ~torch.isfinite(conf), torch.zeros_like(conf), conf.clamp(0.0, 1.0))
    kp = torch.where(missing[..., None], torch.zeros_like(keypoints_2d), keypoints_2d)
    if ((conf > 0).sum(-1) < 3).any():
        bad = int(torch.nonzero((conf > 0).sum(-1) < 3)[0, 0])
        raise DataError(f"pose {bad} has fewer than 3 joints with confidence > 0 (NaN keypoints count as 0); "
                        f"ZeDO cannot place it in 3-D: drop it or supply more joints")
    K = K.to(kp.dtype)
    if K.ndim == 2:
        K = K.expand(b, 3, 3)
    if K.shape != (b, 3, 3):
        raise DataError(f"K must be (3, 3) or (B, 3, 3), got {tuple(K.shape)}")
    check_intrinsics(K)
    return kp, conf, K


class ZeDO:
    """The ZeDO optimiser. ``denoiser(x_t, t) -> raw net output`` (EMA weights), ``schedule`` and
    ``prediction_type`` describe the prior; ``denoiser=None`` runs the loop without the prior
    (the "no diffusion" baseline). All other arguments are the hyper-parameters in the module docstring.
    """

    def __init__(self, denoiser: DenoiserFn | None, schedule: NoiseSchedule | None, prediction_type: str = "eps",
                 iterations: int = 1000, t_start: float = 0.1, t_end: float = 0.01, sde_match: str = "subvp",
                 beta_min: float = 0.1, beta_max: float = 20.0, step_size: int = 1, stochastic: bool = False,
                 fixed_translation_fraction: float = 0.2, conf_power: float = 2.0, ipo_iterations: int = 500,
                 ipo_lr: float = 0.1, ipo_joints: Sequence[int] = (0, 1, 4), ipo_depth: float = 3.0,
                 ipo_scale_range: Sequence[float] = (0.5, 2.0), ipo_yaw_starts: int = 1, min_depth: float = 0.1,
                 progress: bool = True) -> None:
        if denoiser is not None and schedule is None:
            raise ValueError("a denoiser needs its noise schedule")
        if not 0 < t_end <= t_start:
            raise ValueError(f"need 0 < t_end <= t_start, got t_start={t_start}, t_end={t_end}")
        if iterations < 0 or ipo_iterations < 0 or ipo_yaw_starts < 1 or step_size < 1:
            raise ValueError("iterations, ipo_iterations >= 0; ipo_yaw_starts, step_size >= 1")
        self.denoiser, self.schedule, self.prediction_type = denoiser, schedule, prediction_type
        self.iterations, self.step_size, self.stochastic = iterations, step_size, stochastic
        self.fixed_iters = int(round(fixed_translation_fraction * iterations))
        self.conf_power, self.min_depth, self.progress = conf_power, min_depth, progress
        self.ipo = dict(iterations=ipo_iterations, lr=ipo_lr, joints=list(ipo_joints), depth=ipo_depth,
                        scale_range=tuple(ipo_scale_range), yaw_starts=ipo_yaw_starts)
        if schedule is not None:
            t = torch.linspace(t_start, t_end, max(iterations, 1), dtype=torch.float64)
            self.timesteps = noise_level_timesteps(schedule, t, sde_match, beta_min, beta_max)
        else:
            self.timesteps = None

    # ------------------------------------------------------------------ initial pose optimisation
    def initial_pose(self, X0: Tensor, kp: Tensor, conf: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``X0`` (N, J, 3) about the vertical axis and place it: returns (X, T)."""
        o = self.ipo
        n, m = X0.shape[0], o["yaw_starts"]
        joints = o["joints"]
        c = conf[:, joints]
        w = torch.where(c.sum(-1, keepdim=True) > 0, c, conf[:, joints] * 0 + 1)
        centre = (kp[:, joints] * w[..., None]).sum(1) / w.sum(-1, keepdim=True)
        T0 = back_project(centre[:, None], K)[:, 0] * o["depth"]
        rep = lambda v: v.repeat_interleave(m, 0)  # noqa: E731
        X0r, kpr, cr, Kr, T0r = rep(X0), rep(kp[:, joints]), rep(c), rep(K), rep(T0)
        yaw = (torch.arange(m, dtype=X0.dtype, device=X0.device) * (2 * math.pi / m)).repeat(n).requires_grad_(True)
        scale = torch.ones(n * m, dtype=X0.dtype, device=X0.device, requires_grad=True)
        lo, hi = o["scale_range"]

        def loss_rows() -> Tensor:
            X = rotate_vertical(X0r[:, joints], yaw) + (T0r * scale.clamp(lo, hi)[:, None])[:, None]
            return ((project(X, Kr) - kpr).abs().sum(-1) * cr).sum(-1)

        if o["iterations"] > 0:
            opt = torch.optim.Adam([yaw, scale], lr=o["lr"])
            with torch.enable_grad():
                for _ in range(o["iterations"]):
                    opt.zero_grad()
                    loss_rows().mean().backward()
                    opt.step()
        with torch.no_grad():
            best = loss_rows().reshape(n, m).argmin(-1) + torch.arange(n, device=X0.device) * m
            X = rotate_vertical(X0r[best], yaw.detach()[best])
            T = T0r[best] * scale.detach()[best].clamp(lo, hi)[:, None]
        return X, T

    # ------------------------------------------------------------------ one reverse step
    def reverse_step(self, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        abar = self.schedule.alphas_cumprod64.to(x.device)
        k_prev = k - self.step_size
        a_t = abar[k]
        a_prev = abar[k_prev] if k_prev >= 0 else torch.ones((), dtype=abar.dtype, device=x.device)
        tt = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        out = self.denoiser(x, tt).float()
        x0, eps = to_x0_eps(self.prediction_type, self.schedule, out, x.float(), tt)
        if self.stochastic and k_prev >= 0:
            beta = 1 - a_t / a_prev
            mean = (a_prev.sqrt() * beta / (1 - a_t)).float() * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)).float() * x
            var = (beta * (1 - a_prev) / (1 - a_t)).float()
            return (mean + var.sqrt() * torch.randn(x.shape, generator=generator, device=x.device)).to(x.dtype)
        return (a_prev.sqrt().float() * x0 + (1 - a_prev).sqrt().float() * eps).to(x.dtype)

    # ------------------------------------------------------------------ full run
    @torch.no_grad()
    def __call__(self, keypoints_2d: Tensor, K: Tensor, init_poses: Tensor, confidence: Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Estimate 3-D poses from ``keypoints_2d`` (B, J, 2) with intrinsics ``K`` and S ``init_poses`` (S, J, 3).

        Returns ``poses`` (B, S, J, 3) root-relative camera-frame estimates, ``translation`` (B, S, 3),
        ``reprojection`` (B, S) mean confidence-weighted pixel error, and ``init`` (B, S, J, 3) the
        placed initial hypotheses (after IPO).
        """
        kp, conf, K = prepare_inputs(keypoints_2d, confidence, K)
        b, s = kp.shape[0], init_poses.shape[0]
        if init_poses.shape[1:] != kp.shape[1:2] + (3,):
            raise DataError(f"initial poses {tuple(init_poses.shape)} do not match {kp.shape[1]} keypoints")
        rep = lambda v: v.repeat_interleave(s, 0)  # noqa: E731
        kp_r, conf_r, K_r = rep(kp), rep(conf), rep(K)
        X0 = init_poses.to(kp).repeat(b, 1, 1)
        X, T = self.initial_pose(X0, kp_r, conf_r, K_r)
        init = X.clone()
        rays = back_project(kp_r, K_r)
        w = conf_r ** self.conf_power
        step = conf_r.clamp(0, 1)
        it = range(self.iterations)
        if self.progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="ZeDO", leave=False)
        for i in it:
            if i >= self.fixed_iters:
                T_new = solve_translation(X, rays, w, T)
                T = torch.where(T_new[:, 2:] > self.min_depth, T_new, T)
            X = move_to_rays(X, T, rays, step)
            root = X[:, :1]
            X, T = X - root, T + root[:, 0]
            if self.denoiser is not None:
                X = self.reverse_step(X, int(self.timesteps[i]), generator)
        X = X - X[:, :1]
        reproj = ((project(X + T[:, None], K_r) - kp_r).norm(dim=-1) * conf_r).sum(-1) / conf_r.sum(-1)
        return {"poses": X.reshape(b, s, *X.shape[1:]), "translation": T.reshape(b, s, 3),
                "reprojection": reproj.reshape(b, s), "init": (init - init[:, :1]).reshape(b, s, *X.shape[1:])}
