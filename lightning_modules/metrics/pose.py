"""3-D pose errors: MPJPE, PA-MPJPE, N-MPJPE, PCK and AUC, as functions and torchmetrics ``Metric``s.

Inputs are ``(B, J, 3)`` predicted and ground-truth poses in metres (``unit_scale`` converts to
the reported unit: 1000 -> millimetres). Errors are Euclidean distances per joint averaged over
joints and poses. Conventions (as in VideoPose3D and the MPI-INF-3DHP protocol):

- **MPJPE**: poses compared as given (pass root-relative poses for protocol #1).
- **PA-MPJPE** (protocol #2): the prediction is aligned to the truth by the similarity transform
  (rotation, uniform scale, translation) minimising squared error (Umeyama 1991); reflections are
  excluded (``det R = +1``) so a mirrored pose keeps its error.
- **N-MPJPE**: the prediction is scaled by ``s = <pred, gt> / <pred, pred>`` (least-squares scale
  only, no centring; Rhodin et al. 2018).
- **PCK@t**: share of joints with error below ``t`` (150 mm); **AUC**: mean PCK over thresholds
  0, 5, ..., 150 mm.

The ``Metric`` classes keep sums and counts (``dist_reduce_fx="sum"``), so they are exact under
DDP, and take an optional ``joints`` subset.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _check(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pose metrics expect pred and gt of the same shape (B, J, 3), got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """``pred`` mapped by the best similarity transform (s R x + t, det R = +1) onto ``gt``; (B, J, 3)."""
    _check(pred, gt)
    p, g = pred.double(), gt.double()
    mu_p, mu_g = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    p0, g0 = p - mu_p, g - mu_g
    cov = g0.transpose(1, 2) @ p0                       # (B, 3, 3) = sum_j g_j p_j^T
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))            # -1 where the best orthogonal map reflects
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh                                      # rotation taking p0 to g0
    var_p = (p0 ** 2).sum((1, 2))
    s = (S * torch.diagonal(D, dim1=-2, dim2=-1)).sum(-1) / var_p.clamp(min=1e-12)
    aligned = s[:, None, None] * p0 @ R.transpose(1, 2) + mu_g
    return aligned.to(pred.dtype)


def scale_align(pred: Tensor, gt: Tensor) -> Tensor:
    """``pred`` times the least-squares scale ``<pred, gt> / <pred, pred>`` per pose."""
    _check(pred, gt)
    s = (pred * gt).sum((1, 2)) / (pred * pred).sum((1, 2)).clamp(min=1e-12)
    return pred * s[:, None, None]


ALIGNMENTS = ("none", "procrustes", "scale")


def joint_errors(pred: Tensor, gt: Tensor, align: str = "none") -> Tensor:
    """Per-joint Euclidean errors ``(B, J)`` after the chosen alignment (``none``, ``procrustes``, ``scale``)."""
    _check(pred, gt)
    if align == "procrustes":
        pred = procrustes_align(pred, gt)
    elif align == "scale":
        pred = scale_align(pred, gt)
    elif align != "none":
        raise ValueError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    return (pred - gt).norm(dim=-1)


def mpjpe(pred: Tensor, gt: Tensor, align: str = "none") -> Tensor:
    """Mean per-joint error of each pose, ``(B,)``, in the input unit."""
    return joint_errors(pred, gt, align).mean(-1)


class _PoseErrorMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, joints: Sequence[int] | None = None, unit_scale: float = 1000.0, align: str = "none", **kw) -> None:
        super().__init__(**kw)
        if align not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNMENTS)}")
        self.joints = list(joints) if joints is not None else None
        self.unit_scale, self.align = float(unit_scale), align
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _errors(self, pred: Tensor, gt: Tensor) -> Tensor:
        # alignment uses every joint; the subset only selects which errors count
        err = joint_errors(pred.detach(), gt.detach(), self.align) * self.unit_scale
        return err[:, self.joints] if self.joints is not None else err

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class MPJPE(_PoseErrorMetric):
    """Mean per-joint position error (in ``unit_scale`` units, mm by default)."""

    def update(self, pred: Tensor, gt: Tensor) -> None:
        err = self._errors(pred, gt)
        self.total += err.double().sum()
        self.count += err.numel()


class PAMPJPE(MPJPE):
    """MPJPE after similarity Procrustes alignment (protocol #2)."""

    def __init__(self, **kw) -> None:
        super().__init__(align="procrustes", **kw)


class NMPJPE(MPJPE):
    """MPJPE after least-squares scale alignment."""

    def __init__(self, **kw) -> None:
        super().__init__(align="scale", **kw)


class PCK(_PoseErrorMetric):
    """Percentage (0-100) of joints whose error is below ``threshold`` (in the reported unit, 150 mm)."""

    def __init__(self, threshold: float = 150.0, **kw) -> None:
        super().__init__(**kw)
        self.threshold = float(threshold)

    def update(self, pred: Tensor, gt: Tensor) -> None:
        err = self._errors(pred, gt)
        self.total += (err < self.threshold).double().sum()
        self.count += err.numel()

    def compute(self) -> Tensor:
        return (100.0 * self.total / self.count.clamp(min=1)).float()


class AUC(_PoseErrorMetric):
    """Area under the PCK curve: mean PCK (0-100) over ``num_thresholds`` thresholds from 0 to ``max_threshold``."""

    def __init__(self, max_threshold: float = 150.0, num_thresholds: int = 31, **kw) -> None:
        super().__init__(**kw)
        self.thresholds = torch.linspace(0.0, float(max_threshold), num_thresholds, dtype=torch.float64)
        self.add_state("hits", default=torch.zeros(num_thresholds, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor) -> None:
        err = self._errors(pred, gt).double().reshape(-1)
        self.hits += (err[None] < self.thresholds.to(err.device)[:, None]).double().sum(-1)
        self.count += err.numel()

    def compute(self) -> Tensor:
        return (100.0 * (self.hits / self.count.clamp(min=1)).mean()).float()


def pose_metrics(joints: Sequence[int] | None = None, unit_scale: float = 1000.0) -> dict[str, Metric]:
    """The standard set, keyed by the names used in tables: mpjpe, pa_mpjpe, n_mpjpe, pck150, auc."""
    kw = dict(joints=joints, unit_scale=unit_scale)
    return {"mpjpe": MPJPE(**kw), "pa_mpjpe": PAMPJPE(**kw), "n_mpjpe": NMPJPE(**kw), "pck150": PCK(**kw), "auc": AUC(**kw)}
