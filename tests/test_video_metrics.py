"""Video metrics (FVD, temporal change, frame-wise FID) and video sample files (GIF, filmstrip, W&B)."""
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.moving_mnist import MovingMNISTDataModule
from kakusan.errors import UserError
from lightning_modules.callbacks.video_logger import save_video_samples, wandb_video
from lightning_modules.metrics.video import (FrechetVideoDistance, RandomConv3dExtractor, center_digits,
                                             class_table_markdown, compute_fvd, digit_scores_by_class, write_class_report, digit_agreement_by_distance, digit_consistency,
                                             digit_motion, frechet_distance, ink_centres, resolve_i3d_path,
                                             temporal_change, video_metrics)


@pytest.fixture(scope="module")
def clips():
    dm = MovingMNISTDataModule(num_train=48, num_val=48, frames=6, image_size=16, digit_size=10, speed=1.0,
                               batch_size=8)
    return dm.real_samples(48, "train"), dm.real_samples(48, "val")


def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5.0 + (1 - 3) ** 2 + (2 - 1) ** 2)


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_distortion(clips):
    train, val = clips
    ext = RandomConv3dExtractor(in_channels=1, width=8, seed=0)
    assert compute_fvd(train, train, ext) == pytest.approx(0.0, abs=1e-4)
    real_vs_real = compute_fvd(train, val, ext)
    frozen = train[:, :1].expand_as(train)  # the first frame repeated: no motion
    noisy = (train + 0.5 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert 0 < real_vs_real < compute_fvd(frozen, val, ext)
    assert real_vs_real < compute_fvd(noisy, val, ext)
    # the metric object accumulates in chunks and gives the same number as one pass
    dim = ext(train[:1]).shape[-1]
    m = FrechetVideoDistance(ext, feature_dim=dim, batch_size=7)
    m.update(val[:20], real=True), m.update(val[20:], real=True), m.update(train, real=False)
    assert float(m.compute()) == pytest.approx(real_vs_real, rel=1e-6)
    assert compute_fvd(train, val, RandomConv3dExtractor(1, 8, seed=0)) == real_vs_real  # seeded extractor


def test_temporal_change_and_metric_bundle(clips):
    train, val = clips
    static = train[:, :1].expand_as(train)
    assert torch.equal(temporal_change(static), torch.zeros(len(train)))
    flicker = torch.where(torch.arange(6)[None, :, None, None, None] % 2 == 0, 1.0, -1.0).expand(2, 6, 1, 4, 4)
    assert torch.allclose(temporal_change(flicker), torch.ones(2))
    out = video_metrics(static, val, fid_extractor=None, fvd_extractor=RandomConv3dExtractor(1, 8))
    assert out["video/temporal_change_fake"] == 0 and out["video/temporal_change_real"] > 0
    assert out["video/fvd_custom"] > 0


def test_frame_fid_with_digits_features(clips):
    train, val = clips
    out = video_metrics(train, val, fid_extractor="digits", fvd_extractor=None)
    same = video_metrics(train, train, fid_extractor="digits", fvd_extractor=None)
    assert same["video/frame_fid_digits"] == pytest.approx(0.0, abs=1e-3)
    assert out["video/frame_fid_digits"] > same["video/frame_fid_digits"]


def test_digit_consistency_drops_when_digits_change_between_frames():
    real = MovingMNISTDataModule(num_train=8, num_val=64, frames=8, image_size=32, digit_size=20,
                                 batch_size=8).real_samples(64, "val")
    same = digit_consistency(real)
    assert same.shape == (64,) and float(same.mean()) > 0.9  # one digit per clip: the classifier agrees
    # frame t of clip i taken from clip i + t: the place moves smoothly-ish, the digit changes every frame
    idx = (torch.arange(64)[:, None] + torch.arange(8)[None, :]) % 64
    morph = real[idx, torch.arange(8)[None, :]]
    assert float(digit_consistency(morph).mean()) < float(same.mean()) - 0.3
    out = video_metrics(morph, real, fid_extractor="digits", fvd_extractor=None)
    assert out["video/digit_consistency_real"] == pytest.approx(float(same.mean()))
    assert out["video/digit_consistency_fake"] == pytest.approx(float(digit_consistency(morph).mean()))
    with pytest.raises(ValueError, match="single-channel"):
        digit_consistency(real.repeat(1, 1, 3, 1, 1))


def test_digit_agreement_by_distance_separates_drift_from_unreadable_frames():
    real = MovingMNISTDataModule(num_train=8, num_val=64, frames=8, image_size=32, digit_size=20,
                                 batch_size=8).real_samples(64, "val")
    steady = digit_agreement_by_distance(real)
    assert steady.shape == (7,) and float(steady.min()) > 0.9
    # drift: the clip's last four frames come from the next clip (one switch in the middle)
    switch = real.clone()
    switch[:, 4:] = real.roll(1, dims=0)[:, 4:]
    drift = digit_agreement_by_distance(switch)
    assert float(drift[0]) > 0.8 and float(drift[-1]) < float(drift[0]) - 0.4  # neighbours agree, the ends do not
    # every frame from another clip: already the neighbours disagree
    idx = (torch.arange(64)[:, None] + torch.arange(8)[None, :]) % 64
    shuffled = digit_agreement_by_distance(real[idx, torch.arange(8)[None, :]])
    assert float(shuffled[0]) < 0.5
    out = video_metrics(switch, real, fid_extractor="digits", fvd_extractor=None)
    assert out["video/digit_agreement_next_fake"] == pytest.approx(float(drift[0]))
    assert out["video/digit_agreement_ends_fake"] == pytest.approx(float(drift[-1]))
    assert out["video/digit_agreement_ends_real"] == pytest.approx(float(steady[-1]))
    with pytest.raises(ValueError, match="at least 2 frames"):
        digit_agreement_by_distance(real[:, :1])


def test_digit_scores_by_class_tell_steady_classes_from_drifting_ones(tmp_path):
    dm = MovingMNISTDataModule(num_train=8, num_val=64, frames=8, image_size=32, digit_size=20, batch_size=8,
                               conditional=True)
    real, labels = dm.make_split("val")
    rows = digit_scores_by_class(real, labels)
    assert [r["class"] for r in rows] == sorted(set(labels.tolist()))
    assert sum(r["clips"] for r in rows) == 64
    # real clips keep their digit; the classifier does not read every real digit right (its ceiling)
    assert min(r["consistency"] for r in rows) == 1.0 and min(r["agreement_ends"] for r in rows) == 1.0
    assert 0.6 < sum(r["requested_share"] * r["clips"] for r in rows) / 64 < 1.0
    # clips asked for digit k that turn into the next clip's digit half-way: k's row drifts, the rest hold
    k = int(labels[0])
    drift = real.clone()
    mine = (labels == k).nonzero().flatten()
    other = (labels != k).nonzero().flatten()[: len(mine)]
    drift[mine, 4:] = real[other, 4:]
    after = {r["class"]: r for r in digit_scores_by_class(drift, labels)}
    before = {r["class"]: r for r in rows}
    assert after[k]["agreement_ends"] < before[k]["agreement_ends"] - 0.5
    assert after[k]["consistency"] < before[k]["consistency"]
    assert all(after[c] == before[c] for c in before if c != k)
    table = class_table_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[0].startswith("| digit | clips |") and "real" not in table[0]
    with pytest.raises(ValueError, match="labels"):
        digit_scores_by_class(real, labels[:3])
    # the report puts the classifier's reading of the real clips of each digit beside the generated ones
    report = write_class_report(tmp_path, drift, labels, real, labels)
    assert [r["real_requested_share"] for r in report] == [r["requested_share"] for r in rows]
    assert [r["real_clips"] for r in report] == [r["clips"] for r in rows]
    table = (tmp_path / "video_by_class.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[0].endswith("real frames showing it |")
    # the all-clip scores are the clip-weighted means of the rows, for generated and real clips
    out = video_metrics(drift, real, fid_extractor="digits", fvd_extractor=None, fake_labels=labels,
                        real_labels=labels)
    n = sum(r["clips"] for r in rows)
    assert out["video/class_accuracy"] == pytest.approx(sum(r["requested_share"] * r["clips"] for r in report) / n)
    assert out["video/class_accuracy_real"] == pytest.approx(sum(r["requested_share"] * r["clips"] for r in rows) / n)


def test_digit_motion_tracks_speed_and_separates_smooth_from_jittery_motion():
    # a 3x3 square moving (1, 2) px per frame: speed sqrt(5), no jerk; the track is its centre
    clip = torch.full((1, 5, 1, 24, 24), -1.0)
    for t in range(5):
        clip[0, t, 0, 2 + t:5 + t, 3 + 2 * t:6 + 2 * t] = 1.0
    assert torch.allclose(ink_centres(clip[0]), torch.tensor([[3.0 + t, 4.0 + 2 * t] for t in range(5)]))
    speed, jerk = digit_motion(clip)
    assert speed.item() == pytest.approx(5 ** 0.5, abs=1e-5) and jerk.item() == pytest.approx(0.0, abs=1e-5)
    real = MovingMNISTDataModule(num_train=8, num_val=64, frames=8, image_size=32, digit_size=20, speed=1.0,
                                 batch_size=8).real_samples(64, "val")
    speed, jerk = digit_motion(real)
    assert speed.shape == jerk.shape == (64,)
    assert float(speed.mean()) == pytest.approx(1.0, abs=0.2)  # the data's 1 px per frame (whole-pixel rendering)
    frozen_speed, frozen_jerk = digit_motion(real[:, :1].expand_as(real))
    assert torch.equal(frozen_speed, torch.zeros(64)) and torch.equal(frozen_jerk, torch.zeros(64))
    jumbled = real[:, torch.tensor([0, 4, 1, 6, 2, 7, 3, 5])]  # the same frames out of order: jumps back and forth
    assert float(digit_motion(jumbled)[1].mean()) > 3 * float(jerk.mean())
    out = video_metrics(jumbled, real, fid_extractor="digits", fvd_extractor=None)
    assert out["video/digit_speed_real"] == pytest.approx(float(speed.mean()))
    assert out["video/digit_jerk_fake"] > out["video/digit_jerk_real"]
    assert ink_centres(torch.full((1, 1, 8, 8), -1.0)).tolist() == [[3.5, 3.5]]  # blank: the image centre
    with pytest.raises(ValueError, match="T>=3"):
        digit_motion(real[:, :2])


def test_center_digits_moves_the_ink_to_the_middle():
    frame = torch.full((2, 1, 32, 32), -1.0)
    frame[0, 0, 2:6, 24:30] = 1.0  # a blob in the top-right corner
    centred = center_digits(frame)
    ys, xs = torch.nonzero(centred[0, 0] > 0, as_tuple=True)
    assert centred[0].gt(0).sum() == frame[0].gt(0).sum()  # shifted, not cut
    assert abs(ys.float().mean() - 15.5) <= 0.5 and abs(xs.float().mean() - 15.5) <= 0.5
    assert torch.equal(centred[1], frame[1])  # a blank frame stays blank


def test_i3d_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="i3d_torchscript.pt"):
        resolve_i3d_path(str(tmp_path / "nope.pt"), cache_dir=str(tmp_path))


def test_gif_filmstrip_and_wandb_video_written(tmp_path, clips):
    train, _ = clips
    paths = save_video_samples(train[:5], tmp_path / "samples", "final", fps=5, scale=2, per_sample=2)
    with Image.open(paths["grid_gif"]) as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0
        gif.seek(3)
        frame = np.asarray(gif.convert("L"))
    assert frame.max() > 128  # a digit is visible in the middle of the clip
    with Image.open(paths["filmstrip"]) as strip:  # 5 rows x 6 columns of 16 px tiles (2 px padding), x2
        assert strip.size == ((6 * 18 + 2) * 2, (5 * 18 + 2) * 2)
    assert sorted(p.name for p in (tmp_path / "samples" / "final").iterdir()) == ["00.gif", "01.gif"]
    video = wandb_video(train[:5], paths["grid_gif"], fps=5)
    assert type(video).__name__ == "Video"


def test_video_metrics_reject_clips_of_another_shape(clips):
    train, val = clips
    with pytest.raises(UserError, match="differ in shape"):
        video_metrics(train[:, :4], val, fid_extractor=None, fvd_extractor=None)
