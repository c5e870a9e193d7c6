"""BVH reader, CMU -> H36M mapping, cameras, H36M / keypoint files and the pose datamodule."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from datamodules.base import DataError
from datamodules.pose import PoseDataModule
from datamodules.pose.bvh import bvh_positions, euler_to_matrix, parse_bvh
from datamodules.pose.camera import Cameras, RandomCameras, back_project, observe, project
from datamodules.pose.datamodule import augment_poses
from datamodules.pose.h36m import h36m_file, load_h36m_poses, load_keypoints_file
from datamodules.pose.skeleton import (BONES, FLIP_PERM, H36M_PARENTS, NUM_JOINTS, bone_lengths, cmu_to_h36m,
                                       facing_angle, mirror, rotate_vertical)


@pytest.fixture(scope="module")
def clip(data_dir):
    return parse_bvh(data_dir / "mocap" / "cmu" / "131_01.bvh")


def test_bvh_header_and_fk_keeps_bone_lengths(clip):
    assert clip.num_frames == 994 and abs(clip.fps - 120) < 0.01
    assert clip.names[0] == "Hips" and clip.channels[0][:3] == ["Xposition", "Yposition", "Zposition"]
    pos = bvh_positions(clip, np.arange(0, clip.num_frames, 7))
    # every BVH bone is rigid: |p_child - p_parent| == |offset_child| in every frame
    for j, p in enumerate(clip.parents):
        if p < 0:
            continue
        length = np.linalg.norm(pos[:, j] - pos[:, p], axis=-1)
        np.testing.assert_allclose(length, np.linalg.norm(clip.offsets[j]), rtol=0, atol=1e-9)
    # the root follows its position channels, and the subject actually walks (> 1 m)
    np.testing.assert_allclose(pos[:, 0], clip.motion[::7, :3], atol=1e-12)
    assert np.linalg.norm(pos[-1, 0, [0, 2]] - pos[0, 0, [0, 2]]) * 0.056444 > 1.0


def test_euler_zyx_order():
    a = torch.tensor([[30.0, 20.0, 10.0]], dtype=torch.float64)
    R = euler_to_matrix(a, "zyx")[0]
    z, y, x = (math.radians(v) for v in (30.0, 20.0, 10.0))
    Rz = torch.tensor([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]], dtype=torch.float64)
    Ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]], dtype=torch.float64)
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]], dtype=torch.float64)
    torch.testing.assert_close(R, Rz @ Ry @ Rx)


def test_h36m_mapping_shape_and_plausible_bones(clip):
    poses = cmu_to_h36m(bvh_positions(clip, np.arange(0, clip.num_frames, 10)), clip.names)
    assert poses.shape == (100, NUM_JOINTS, 3) and np.abs(poses[:, 0]).max() == 0
    lengths = bone_lengths(poses).mean(0)
    bone = {(p, c): lengths[k] for k, (p, c) in enumerate(BONES)}
    for thigh in ((1, 2), (4, 5)):
        assert 0.3 < bone[thigh] < 0.55          # metres
    for shin in ((2, 3), (5, 6)):
        assert 0.3 < bone[shin] < 0.55
    for upper_arm in ((11, 12), (14, 15)):
        assert 0.18 < bone[upper_arm] < 0.4
    np.testing.assert_allclose(bone[(1, 2)], bone[(4, 5)], rtol=0.05)   # left/right symmetric
    # y is down: head above pelvis above ankles; ankle to top of head 1.1 - 2.0 m
    assert (poses[:, 10, 1] < 0).all() and (poses[:, 3, 1] > 0).all()
    height = (poses[:, [3, 6], 1].max(1) - poses[:, 10, 1]).mean()
    assert 1.1 < height < 2.0
    assert len(H36M_PARENTS) == NUM_JOINTS and sorted(FLIP_PERM) == list(range(NUM_JOINTS))


def test_mirror_rotation_and_facing():
    torch.manual_seed(0)
    x = torch.randn(4, NUM_JOINTS, 3, dtype=torch.float64)
    torch.testing.assert_close(mirror(mirror(x)), x)
    a = torch.rand(4, dtype=torch.float64) * 6
    r = rotate_vertical(x, a)
    torch.testing.assert_close(bone_lengths(r), bone_lengths(x))
    torch.testing.assert_close(r[..., 1], x[..., 1])
    aligned = rotate_vertical(r, -facing_angle(r))
    torch.testing.assert_close(facing_angle(aligned), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    aug = augment_poses(x.float(), mirror_prob=0.0, tilt_deg=20.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bone_lengths(aug), bone_lengths(x.float()), atol=1e-5, rtol=1e-5)
    # mirroring swaps left and right bones
    m = bone_lengths(mirror(x))
    torch.testing.assert_close(m[:, [3, 4, 5]], bone_lengths(x)[:, [0, 1, 2]])


def test_camera_projection_round_trip():
    cams = RandomCameras().sample(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(cams.R @ cams.R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    torch.testing.assert_close(torch.linalg.det(cams.R), torch.ones(6, dtype=torch.float64))
    X = torch.randn(6, 17, 3, dtype=torch.float64) * 0.4
    Xc = cams.to_camera(X)
    assert (Xc[..., 2] > 1.0).all()
    uv = project(Xc, cams.K)
    rays = back_project(uv, cams.K)
    # the ray through a projected point passes through the point: X_c = |X_c| * ray
    torch.testing.assert_close(rays * Xc.norm(dim=-1, keepdim=True), Xc)
    # the pelvis (world origin) is near the image centre: cameras look at it (up to the pitch jitter)
    centre = cams.project(torch.zeros(6, 1, 3, dtype=torch.float64))[:, 0]
    assert ((centre - 500).abs() < 0.1 * cams.K[:, 0, 0:1] + 1).all()
    # seeded: same seed -> same cameras
    again = RandomCameras().sample(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(again.K, cams.K)


def test_observe_noise_and_dropout():
    cams = RandomCameras().sample(50, torch.Generator().manual_seed(1))
    X = torch.randn(50, 17, 3) * 0.3
    obs = observe(X, cams, noise_px=2.0, drop_prob=0.3, generator=torch.Generator().manual_seed(2))
    missing = torch.isnan(obs["keypoints_2d"]).any(-1)
    assert missing.any() and torch.equal(missing, obs["confidence"] == 0)
    assert ((~missing).sum(-1) >= 3).all()
    torch.testing.assert_close(obs["x"], obs["poses_cam"] - obs["poses_cam"][:, :1])


def test_h36m_archive_and_keypoint_files(tmp_path):
    with pytest.raises(DataError, match="data_3d_h36m.npz"):
        h36m_file(tmp_path)
    rng = np.random.default_rng(0)
    positions = {"S9": {"Walking 1": rng.normal(size=(20, 32, 3)), "Eating": rng.normal(size=(10, 32, 3))}}
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=positions)
    out = load_h36m_poses(tmp_path / "data_3d_h36m.npz", ["S9"], actions=["Walking"], stride=2)
    assert list(out) == ["S9/Walking 1"] and out["S9/Walking 1"].shape == (10, 17, 3)
    src = positions["S9"]["Walking 1"][::2]
    np.testing.assert_allclose(out["S9/Walking 1"][:, 10, 1], -(src[:, 15, 2] - src[:, 0, 2]), rtol=1e-5)  # head, z up -> y down
    with pytest.raises(DataError, match="subject 'S11'"):
        load_h36m_poses(tmp_path / "data_3d_h36m.npz", ["S11"])

    K = np.array([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]])
    kp = rng.uniform(0, 1000, size=(3, 17, 2))
    kp[0, 5] = np.nan
    path = tmp_path / "kp.json"
    path.write_text(json.dumps({"keypoints_2d": kp.tolist(), "K": K.tolist()}))
    f = load_keypoints_file(path)
    assert f["confidence"][0, 5] == 0 and f["confidence"].sum() == 3 * 17 - 1 and f["K"].shape == (3, 3, 3)
    np.savez(tmp_path / "bad.npz", keypoints_2d=kp[:, :16], K=K)
    with pytest.raises(DataError, match="H36M-17"):
        load_keypoints_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "zero.npz", keypoints_2d=kp, K=K, confidence=np.zeros((3, 17)))
    with pytest.raises(DataError, match="no usable joint"):
        load_keypoints_file(tmp_path / "zero.npz")
    np.savez(tmp_path / "sing.npz", keypoints_2d=kp, K=np.zeros((3, 3)))
    with pytest.raises(DataError, match="invertible"):
        load_keypoints_file(tmp_path / "sing.npz")


def test_datamodule_splits_and_evaluation_batch(data_dir):
    dm = PoseDataModule(str(data_dir), stride=4, eval_stride=50, batch_size=32)
    dm.setup()
    assert dm.data_shape == (17, 3) and dm.train_poses.shape[1:] == (17, 3)
    n01, n03 = len(range(0, 994, 4)), len(range(0, 1102, 4))
    assert len(dm.train_poses) + len(dm.val_poses) == n01 + n03
    assert len(dm.test_poses) == len(range(0, 1247, 50))
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (32, 17, 3)
    ev = dm.evaluation_batch(num=5)
    assert ev["x"].shape == (5, 17, 3) and ev["cond"]["keypoints_2d"].shape == (5, 17, 2)
    assert ev["cond"]["K"].shape == (5, 3, 3) and (ev["cond"]["confidence"] == 1).all()
    # camera-frame truth is the test pose rotated: same bone lengths
    torch.testing.assert_close(bone_lengths(ev["x"]), bone_lengths(dm.test_poses[:5]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dm.evaluation_batch(num=5)["cond"]["keypoints_2d"], ev["cond"]["keypoints_2d"])
    with pytest.raises(DataError, match="both training and test"):
        PoseDataModule(str(data_dir), train_clips=["131_01"], test_clips=["131_01"])
    with pytest.raises(DataError, match="not found"):
        PoseDataModule(str(data_dir), train_clips=["999_99"]).setup()
