"""The ZeDO loop (translation solve, rays, IPO, noise-level mapping, prior step), bad inputs, and the
pose_prior_cmu / zedo entry points end to end at a tiny size."""
from __future__ import annotations

import math

import pytest
import torch

from datamodules.base import DataError
from datamodules.pose.camera import RandomCameras, back_project, observe
from datamodules.pose.skeleton import rotate_vertical
from lightning_modules.diffusion.pose_optimization import (ZeDO, cluster_poses, noise_level_timesteps,
                                                           solve_translation)
from lightning_modules.diffusion.schedule import NoiseSchedule
from lightning_modules.metrics.pose import mpjpe


@pytest.fixture(scope="module")
def scene(data_dir):
    from datamodules.pose import PoseDataModule

    dm = PoseDataModule(str(data_dir), stride=8, eval_stride=100, batch_size=16)
    dm.setup()
    return dm, dm.evaluation_batch(num=4)


def test_translation_solve_is_exact(scene):
    _, ev = scene
    X, cam = ev["x"].double(), ev["poses_cam"].double()
    rays = back_project(ev["cond"]["keypoints_2d"].double(), ev["cond"]["K"].double())
    T = solve_translation(X, rays, torch.ones(X.shape[:2], dtype=torch.float64))
    torch.testing.assert_close(T, cam[:, 0], atol=1e-5, rtol=0)  # inputs are float32 pixels


def test_loop_recovers_pose_from_noiseless_2d(scene):
    _, ev = scene
    gt, c = ev["x"], ev["cond"]
    # exact start: the translation solve is exact, so moving joints onto their rays changes nothing
    z = ZeDO(None, None, iterations=3, fixed_translation_fraction=0.0, ipo_iterations=0, progress=False)
    for b in range(2):
        out = z(c["keypoints_2d"][b:b + 1], c["K"][b:b + 1], gt[b:b + 1])
        assert float(mpjpe(out["poses"][:, 0], gt[b:b + 1])) < 1e-4
        torch.testing.assert_close(out["translation"][0, 0], ev["poses_cam"][b, 0], atol=1e-4, rtol=0)
        assert float(out["reprojection"].max()) < 1e-2   # pixels
    # the truth turned by 50 degrees about the vertical: IPO (all joints, 4 yaw starts) turns it back
    z = ZeDO(None, None, iterations=20, ipo_iterations=150, ipo_joints=list(range(17)), ipo_yaw_starts=4, progress=False)
    start = rotate_vertical(gt[:1], torch.tensor([math.radians(50.0)]))
    out = z(c["keypoints_2d"][:1], c["K"][:1], start)
    assert float(mpjpe(out["init"][:, 0], gt[:1])) < 0.03 < float(mpjpe(start, gt[:1]))


def test_noise_level_mapping():
    sched = NoiseSchedule("linear", 1000)
    t = torch.tensor([0.1, 0.05, 0.01], dtype=torch.float64)
    vp = noise_level_timesteps(sched, t, "vp")
    # the linear DDPM schedule discretises the VP SDE (beta 0.1..20): k ~ t * T
    assert (vp - torch.tensor([100, 50, 10])).abs().max() <= 2
    sub = noise_level_timesteps(sched, t, "subvp")
    assert (sub <= vp).all() and sub[0] > sub[1] >= sub[2] >= 0   # sub-VP is less noisy at the same t
    abar = sched.alphas_cumprod64[sub[0]]
    sigma = 1 - math.exp(-(0.1 * 0.1 + 0.5 * 19.9 * 0.01))         # sub-VP std at t = 0.1 (unit data)
    assert abs(math.sqrt((1 - abar) / abar) - sigma / math.exp(-0.5 * 0.1095)) < 0.01


def test_prior_step_runs_and_is_seeded(scene):
    from lightning_modules.nets.pose_mlp import PoseScoreMLP

    dm, ev = scene
    torch.manual_seed(0)
    net = PoseScoreMLP(hidden=64, embed_dim=32, groups=8).eval()
    sched = NoiseSchedule("linear", 1000)
    init = cluster_poses(dm.train_poses, 2, seed=0)
    torch.testing.assert_close(init, cluster_poses(dm.train_poses, 2, seed=0))
    assert init.shape == (2, 17, 3) and (init[:, 0] == 0).all()
    outs = []
    for _ in range(2):
        z = ZeDO(lambda x, t: net(x, t), sched, iterations=6, ipo_iterations=5, stochastic=True, progress=False)
        outs.append(z(ev["cond"]["keypoints_2d"], ev["cond"]["K"], init, generator=torch.Generator().manual_seed(3)))
    assert outs[0]["poses"].shape == (4, 2, 17, 3) and torch.isfinite(outs[0]["poses"]).all()
    torch.testing.assert_close(outs[0]["poses"], outs[1]["poses"])


def test_bad_inputs(scene):
    _, ev = scene
    kp, K, gt = ev["cond"]["keypoints_2d"][:2].clone(), ev["cond"]["K"][:2], ev["x"][:2]
    z = ZeDO(None, None, iterations=2, ipo_iterations=2, progress=False)
    nan_kp = kp.clone()
    nan_kp[0, 13] = float("nan")          # a NaN joint gets confidence 0 and is ignored
    out = z(nan_kp, K, gt[:1])
    assert torch.isfinite(out["poses"]).all()
    with pytest.raises(DataError, match="fewer than 3 joints"):
        z(kp, K, gt[:1], confidence=torch.zeros(2, 17))
    all_nan = kp.clone()
    all_nan[1] = float("nan")
    with pytest.raises(DataError, match="fewer than 3 joints"):
        z(all_nan, K, gt[:1])
    with pytest.raises(DataError, match="do not match"):
        z(kp[:, :16], K, gt[:1])
    with pytest.raises(DataError, match="singular"):
        z(kp, torch.zeros(2, 3, 3), gt[:1])
    with pytest.raises(DataError, match="confidence must be"):
        z(kp, K, gt[:1], confidence=torch.ones(2, 16))


def test_pose_prior_fast_dev_run_and_zedo_entry(make_cfg, tmp_path):
    import experiments.train as train_entry
    import experiments.zedo as zedo_entry

    cfg = make_cfg(["experiment=pose_prior_cmu", "debug=fast_dev_run"])
    assert train_entry.train(cfg)["status"] == "finished"
    # a 2-epoch prior with checkpoints, then the whole evaluation at a tiny size
    cfg = make_cfg(["experiment=pose_prior_cmu", "debug=limit", "logger=csv", "model.net.hidden=64",
                    "model.net.embed_dim=32", "model.net.groups=8", "trainer.limit_train_batches=2"], sub="prior")
    train_entry.train(cfg)
    ckpt = tmp_path / "prior" / "checkpoints" / "last.ckpt"
    zcfg = make_cfg(["experiment=zedo_cmu", f"ckpt_path={ckpt}", "zedo.iterations=4", "zedo.ipo_iterations=3",
                     "zedo.progress=false", "evaluation.num_poses=3", "evaluation.hypotheses=[1,2]",
                     "evaluation.num_figures=1"], config_name="zedo", sub="zedo")
    summary = zedo_entry.run_zedo(zcfg)
    out = tmp_path / "zedo"
    assert (out / "zedo_results.csv").is_file() and (out / "figures" / "pose_000.png").is_file()
    assert "| 2 | zedo | best |" in (out / "zedo_results.md").read_text()
    best, single = summary["zedo/S2/zedo/best/mpjpe"], summary["zedo/S2/zedo/single/mpjpe"]
    assert 0 < best <= single
