"""Hands data: self-made masks, keypoint rendering, crops, the datamodule's batches, bad input."""
import numpy as np
import pytest
import torch

from datamodules.base import DataError
from datamodules.hand_keypoints import (check_keypoints, condition_channels, crop, from_crop_coords, hand_box,
                                        render_keypoints, to_crop_coords, uncrop)
from datamodules.hand_masks import hand_mask, hand_masks
from datamodules.hands import HandsDataModule, load_hands


@pytest.fixture(scope="module")
def hands(data_dir):
    return load_hands(str(data_dir))


def test_masks_plausible_on_real_photos(hands):
    m, kp = hands["masks"], hands["keypoints"]
    assert m.dtype == bool and m.shape == hands["images"].shape[:3] and len(m) == 1835
    frac = m.mean((1, 2))
    assert 0.08 < frac.min() and frac.max() < 0.6 and 0.18 < np.median(frac) < 0.35
    size = m.shape[1]
    px = np.clip(np.floor(kp * size).astype(int), 0, size - 1)
    inside = m[np.arange(len(m))[:, None], px[..., 1], px[..., 0]]
    assert inside.mean() > 0.95          # keypoints mostly inside the mask
    assert np.median(inside.mean(1)) == 1.0
    # the wall is background: the top corners are outside the mask in nearly every photo
    assert (~m[:, :3, :3]).all((1, 2)).mean() > 0.95


def test_masks_deterministic_and_single_equals_batch(hands):
    imgs, kp = hands["images"][:12], hands["keypoints"][:12] * 64 - 0.5
    a, b = hand_masks(imgs, kp), hand_masks(imgs, kp)
    assert np.array_equal(a, b) and np.array_equal(a, hands["masks"][:12])
    assert np.array_equal(hand_mask(imgs[3], kp[3]), a[3])


def test_mask_of_blank_wall_is_empty_and_bad_image_raises():
    wall = np.full((32, 32, 3), 200, np.uint8)
    assert hand_mask(wall).sum() == 0
    with pytest.raises(DataError, match="uint8 RGB"):
        hand_mask(np.zeros((32, 32), np.float32))


def test_keypoint_rendering_shape_range_and_peak():
    kp = torch.full((2, 21, 2), 0.5)
    kp[:, :, 1] = torch.linspace(0.2, 0.8, 21)
    for mode in ("skeleton", "heatmap", "both"):
        m = render_keypoints(kp, 32, mode, sigma=1.0)
        assert m.shape == (2, condition_channels(mode), 32, 32)
        assert m.min() >= 0 and m.max() <= 1 and torch.isfinite(m).all()
    h = render_keypoints(kp, 32, "heatmap", sigma=1.0)
    j = 10  # at (0.5, 0.5): between pixels 15 and 16 in both axes
    peak = torch.nonzero(h[0, j] == h[0, j].max())
    assert {tuple(p) for p in peak.tolist()} == {(15, 15), (15, 16), (16, 15), (16, 16)}
    assert torch.equal(render_keypoints(kp, 32), render_keypoints(kp, 32))  # deterministic
    # a missing joint drops its bones but keeps the rest
    kp2 = kp.clone()
    kp2[0, 8] = float("nan")
    m2 = render_keypoints(kp2, 32, "skeleton")
    assert torch.isfinite(m2).all() and m2[0, 2].max() > 0.5


def test_crop_uncrop_round_trip():
    g = torch.linspace(-1, 1, 32)
    img = torch.stack([g[None, :].expand(32, 32), g[:, None].expand(32, 32), (g[None, :] * g[:, None])])[None]
    box = torch.tensor([[0.45, 0.55, 0.5]])
    c = crop(img, box, 64)                       # upsampled crop (2x)
    back, cov = uncrop(c, box, 32)
    inside = cov[0, 0] > 0.999
    assert 200 < inside.sum() < 300              # the box covers ~16x16 frame pixels
    assert (back[0][:, inside] - img[0][:, inside]).abs().max() < 0.08
    assert (cov[0, 0][~inside] < 0.999).all()
    kp = torch.rand(3, 21, 2)
    b3 = hand_box(kp)
    assert torch.allclose(from_crop_coords(to_crop_coords(kp, b3), b3), kp, atol=1e-6)
    kc = to_crop_coords(kp, b3)
    assert kc.min() >= 0.25 / 1.5 - 1e-5 and kc.max() <= 1 - 0.25 / 1.5 + 1e-5  # margin 0.25 on each side


def test_bad_keypoints_raise_clear_errors():
    kp = torch.rand(2, 21, 2) * 0.5 + 0.25
    assert check_keypoints(kp).shape == (2, 21, 2)
    out = kp.clone()
    out[1, 4] = torch.tensor([1.6, 0.5])
    with pytest.raises(DataError, match="outside the image"):
        check_keypoints(out)
    few = kp.clone()
    few[0, :10] = float("nan")
    with pytest.raises(DataError, match="only 11 detected joints"):
        check_keypoints(few)
    with pytest.raises(DataError, match="21-point"):
        check_keypoints(torch.rand(2, 17, 2))


def test_datamodule_batches_follow_the_contract(data_dir):
    crop_dm = HandsDataModule(str(data_dir), view="crop", batch_size=8)
    crop_dm.setup()
    b = next(iter(crop_dm.train_dataloader()))
    assert b["x"].shape == (8, 4, 32, 32) and b["x"].min() >= -1 and b["x"].max() <= 1
    assert set(b["x"][:, 3].unique().tolist()) <= {-1.0, 1.0}          # the mask channel is binary
    assert b["y"].dtype == torch.long and b["cond"]["keypoint_map"].shape == (8, 6, 32, 32)
    assert torch.equal(b["cond"]["mask"] * 2 - 1, b["x"][:, 3:])
    frame_dm = HandsDataModule(str(data_dir), view="frame", batch_size=8, image_size=32)
    frame_dm.setup()
    f = frame_dm.real_batch(5)
    assert f["x"].shape == (5, 3, 32, 32) and f["cond"]["keypoints"].shape == (5, 21, 2)
    assert frame_dm.data_shape == (3, 32, 32) and crop_dm.data_shape == (4, 32, 32)
    assert set(frame_dm.real_batch(20)["y"].tolist()) == set(range(10))  # spread over the sorted split
    # stratified, seeded split: every digit in val, same split for both views
    val_y = frame_dm.val_set.fields["y"]
    assert set(val_y.tolist()) == set(range(10)) and torch.equal(val_y, crop_dm.val_set.fields["y"])


def test_missing_data_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="hand data not found"):
        HandsDataModule(str(tmp_path), view="frame").setup()
