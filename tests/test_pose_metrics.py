"""MPJPE, PA-MPJPE, N-MPJPE, PCK and AUC against hand-worked cases."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.metrics.pose import (AUC, MPJPE, NMPJPE, PAMPJPE, PCK, mpjpe, pose_metrics,
                                            procrustes_align)


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)


@pytest.fixture
def gt():
    torch.manual_seed(0)
    return torch.randn(3, 17, 3, dtype=torch.float64) * 0.3


def value(metric, pred, gt):
    metric.update(pred, gt)
    return float(metric.compute())


def test_mpjpe_constant_offset(gt):
    pred = gt + torch.tensor([0.003, 0.004, 0.0], dtype=torch.float64)   # 3-4-5 triangle: 5 mm
    assert value(MPJPE(), pred, gt) == pytest.approx(5.0, abs=1e-4)
    assert value(MPJPE(unit_scale=1.0), pred, gt) == pytest.approx(0.005, abs=1e-7)
    # joint subset: only joint 0 moved by 10 mm -> 10 mm on [0], 10/17 mm on all joints
    pred2 = gt.clone()
    pred2[:, 0, 0] += 0.010
    assert value(MPJPE(joints=[0]), pred2, gt) == pytest.approx(10.0, abs=1e-4)
    assert value(MPJPE(), pred2, gt) == pytest.approx(10.0 / 17, abs=1e-4)


def test_pa_mpjpe_removes_similarity_transforms(gt):
    pred = 2.5 * gt @ rot_z(73.0).T + torch.tensor([0.4, -1.0, 3.0], dtype=torch.float64)
    assert value(MPJPE(), pred, gt) > 100
    assert value(PAMPJPE(), pred, gt) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(procrustes_align(pred, gt), gt)
    # N-MPJPE removes scale only: exact for a pure scale, not for a rotation
    assert value(NMPJPE(), 0.5 * gt, gt) == pytest.approx(0.0, abs=1e-6)
    assert value(NMPJPE(), gt @ rot_z(90.0).T, gt) > 10


def test_pa_mpjpe_does_not_undo_reflections(gt):
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    pa = mpjpe(mirrored, gt, align="procrustes")
    assert (pa > 0.01).all()          # a mirrored (non-planar) pose is not a rotation of the truth
    # it is the best proper rotation + scale + translation: no random rotation does better
    torch.manual_seed(1)
    for _ in range(200):
        q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
        q = q * torch.sign(torch.det(q))
        p0 = mirrored[0] - mirrored[0].mean(0)
        g0 = gt[0] - gt[0].mean(0)
        r = p0 @ q.T
        s = (r * g0).sum() / (r * r).sum()
        assert (s * r - g0).norm(dim=-1).mean() >= pa[0] - 1e-9
    # a planar pose reflected through its own plane is unchanged: error 0, no spurious flip
    planar = gt.clone()
    planar[..., 2] = 0
    flipped = planar * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    assert float(mpjpe(flipped, planar, align="procrustes").max()) == pytest.approx(0.0, abs=1e-9)


def test_n_mpjpe_hand_worked():
    gt = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0]]], dtype=torch.float64)
    pred = torch.tensor([[[2.0, 1, 0], [-2.0, 1, 0]]], dtype=torch.float64)
    # s = <p, g> / <p, p> = 4 / 10; s p = (0.8, 0.4, 0), (-0.8, 0.4, 0); error sqrt(0.2) m
    assert value(NMPJPE(), pred, gt) == pytest.approx(1000 * math.sqrt(0.2), abs=1e-3)


def test_pck_and_auc_hand_worked():
    gt = torch.zeros(1, 4, 3, dtype=torch.float64)
    pred = torch.tensor([[[0.102, 0, 0], [0, 0.2, 0], [0, 0, 0.142], [0.16, 0, 0]]], dtype=torch.float64)
    assert value(PCK(), pred, gt) == pytest.approx(50.0)
    assert value(PCK(threshold=101.0), pred, gt) == pytest.approx(0.0)
    # thresholds 0, 5, ..., 150: 102 mm is below 10 of them, 142 mm below 2 -> 12 hits / (4 joints * 31)
    assert value(AUC(), pred, gt) == pytest.approx(100 * 12 / (4 * 31))


def test_metrics_accumulate_and_merge_like_ddp(gt):
    pred = gt + 0.01 * torch.randn_like(gt)
    for name, whole in pose_metrics().items():
        whole.update(pred, gt)
        a, b = pose_metrics()[name], pose_metrics()[name]
        a.update(pred[:1], gt[:1])
        b.update(pred[1:], gt[1:])
        a.merge_state(b)            # what the DDP sum-reduction computes
        assert float(a.compute()) == pytest.approx(float(whole.compute()), rel=1e-6), name
    with pytest.raises(ValueError, match="same shape"):
        MPJPE().update(pred[:, :16], gt)
