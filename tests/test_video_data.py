"""Video datamodules: Moving MNIST (deterministic, bounded, moving at the set speed) and video folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DataError
from datamodules.mnist import load_mnist5k
from datamodules.moving_mnist import MovingMNISTDataModule, bounce_trajectories, make_moving_mnist
from datamodules.video_folder import VideoFolderDataModule
from lightning_modules.callbacks.video_logger import save_gif


def small_mm(**kw) -> MovingMNISTDataModule:
    args = dict(num_train=16, num_val=8, frames=6, image_size=24, digit_size=12, speed=2.0, batch_size=4)
    return MovingMNISTDataModule(**{**args, **kw})


def test_moving_mnist_deterministic_bounded_and_split_seeds():
    a, b = small_mm(conditional=True), small_mm(conditional=True)
    a.setup(), b.setup()
    xa, xb = a.train_set.fields["x"], b.train_set.fields["x"]
    assert xa.shape == (16, 6, 1, 24, 24) and torch.equal(xa, xb)
    assert xa.min() >= -1 and xa.max() <= 1 and xa.max() > 0.5  # digits are visible
    assert not torch.equal(a.val_set.fields["x"][:8], xa[:8])  # validation uses another seed and digits
    assert not torch.equal(small_mm(seed=1).real_samples(16, "train"), xa)
    batch = next(iter(a.train_dataloader()))
    assert batch["x"].shape == (4, 6, 1, 24, 24) and batch["y"].shape == (4,) and a.data_shape == (6, 1, 24, 24)


def test_real_labels_follow_the_real_clips_also_in_a_random_subset():
    from lightning_modules.metrics.reference_stats import real_images, real_labels

    dm = small_mm(num_train=40)  # labels exist whether or not the clips are conditional
    clips, labels = dm.real_samples(40, "train"), dm.real_labels(40, "train")
    x, y = dm.make_split("train")
    assert torch.equal(clips, x) and torch.equal(labels, y) and torch.equal(dm.real_labels(3, "val"), dm.make_split("val")[1][:3])
    sub_x, sub_y = real_images(dm, 5, "train", seed=3), real_labels(dm, 5, "train", seed=3)
    assert len(sub_x) == len(sub_y) == 5
    for clip, label in zip(sub_x, sub_y):
        j = [i for i in range(40) if torch.equal(clips[i], clip)]
        assert len(j) == 1 and labels[j[0]] == label
    assert torch.equal(real_labels(dm, None, "train"), labels)
    assert real_labels(VideoFolderDataModule.__new__(VideoFolderDataModule), 5) is None  # no labels to give


def test_digits_move_at_the_set_speed_and_bounce():
    rng = np.random.default_rng(0)
    traj = bounce_trajectories(rng, 50, 30, 1, box=10.0, speed=1.5)
    assert traj.min() >= 0 and traj.max() <= 10.0
    step = np.linalg.norm(np.diff(traj, axis=2), axis=-1)  # (50, 1, 29)
    inside = (traj[:, :, 1:] > 1.5).all(-1) & (traj[:, :, 1:] < 8.5).all(-1) & \
             (traj[:, :, :-1] > 1.5).all(-1) & (traj[:, :, :-1] < 8.5).all(-1)
    np.testing.assert_allclose(step[inside], 1.5, atol=1e-9)  # away from walls: exactly `speed` px per frame
    assert (step <= 1.5 + 1e-9).all()  # a bounce folds the step, never lengthens it

    images, labels = load_mnist5k()
    clips, y, traj = make_moving_mnist(images[:20], labels[:20], 4, frames=5, image_size=32, digit_size=16,
                                       speed=3.0, seed=7)
    assert clips.shape == (4, 5, 32, 32) and clips.dtype == np.uint8 and y.shape == (4,)
    for f in range(5):  # the rendered digit sits at the rounded trajectory position
        r, c = np.rint(traj[0, 0, f]).astype(int)
        assert clips[0, f].sum() == clips[0, f, r:r + 16, c:c + 16].sum() > 0


def test_two_digits_and_bad_settings():
    dm = small_mm(num_digits=2, conditional=True)
    dm.setup()
    assert dm.num_classes == 100 and dm.train_set.fields["y"].max() < 100
    with pytest.raises(DataError, match="digit_size"):
        small_mm(digit_size=40).setup()


def write_frames(folder, clip: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(clip):
        Image.fromarray(f).save(folder / f"{i:03d}.png")


def make_video_tree(root):
    """Two classes; clips as frame folders, .npy arrays and a GIF; frame i has brightness 10 * i."""
    ramp = (np.arange(12, dtype=np.uint8) * 10)[:, None, None] * np.ones((1, 8, 10), np.uint8)
    write_frames(root / "jump" / "clip_a", ramp)
    np.save(root / "jump" / "clip_b.npy", ramp)
    (root / "run").mkdir()
    np.save(root / "run" / "clip_c.npy", ramp[..., None].repeat(3, -1))
    frames = [np.repeat(f[..., None], 3, -1) for f in ramp]
    save_gif(frames, root / "run" / "clip_d.gif", fps=10, scale=1)
    return ramp


def test_video_folder_reads_frames_npy_gif_with_stride(tmp_path):
    make_video_tree(tmp_path)
    dm = VideoFolderDataModule(str(tmp_path), frames=3, frame_stride=2, image_size=8, channels=1, clips_per_video=2,
                               val_fraction=0.0, batch_size=2)
    dm.setup()
    assert dm.classes == ["jump", "run"] and len(dm.train_set) == 8  # 4 videos x 2 windows of 5 frames
    seen = set()
    for item in dm.train_set:
        x = item["x"]
        assert x.shape == (3, 1, 8, 8)
        level = ((x[:, 0].mean(dim=(1, 2)) + 1) * 127.5).round() / 10  # frame index of each frame
        start = level[0].item()
        assert start in (0, 5) and torch.allclose(level, torch.tensor([start, start + 2, start + 4]), atol=0.2)
        seen.add(item["y"])
    assert seen == {0, 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 3, 1, 8, 8) and dm.data_shape == (3, 1, 8, 8)


def test_video_folder_names_unreadable_files(tmp_path):
    make_video_tree(tmp_path)
    (tmp_path / "run" / "broken.npy").write_bytes(b"not an array")
    (tmp_path / "run" / "movie.mp4").write_bytes(b"not a video")
    with pytest.raises(DataError, match="broken.npy"):
        VideoFolderDataModule(str(tmp_path), frames=3, image_size=8, val_fraction=0.0, batch_size=2).setup()
    (tmp_path / "run" / "broken.npy").unlink()
    with pytest.raises(DataError, match=r"movie\.mp4.*imageio-ffmpeg"):
        VideoFolderDataModule(str(tmp_path), frames=3, image_size=8, val_fraction=0.0, batch_size=2).setup()
    dm = VideoFolderDataModule(str(tmp_path), frames=3, image_size=8, val_fraction=0.0, batch_size=2, on_error="skip")
    dm.setup()
    assert dm.skipped == [str(tmp_path / "run" / "movie.mp4")] and len(dm.train_set) == 4
    with pytest.raises(DataError, match="UCF"):
        VideoFolderDataModule(str(tmp_path / "missing"), download_hint="Get UCF-101 first.").setup()
