"""Datamodules yield the batch contract from real data, and bad data fails clearly."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DataError
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.digits import DigitsDataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.mnist import MNISTDataModule, load_mnist5k
from datamodules.toy2d import DISTRIBUTIONS, Toy2DDataModule


def test_mnist5k_is_real_and_balanced():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert 0.05 < (images > 128).mean() < 0.4  # strokes on a dark background


def test_mnist_datamodule_split_and_batch():
    dm = MNISTDataModule(batch_size=16, val_fraction=0.1, split_seed=0)
    dm.setup()
    assert len(dm.train_set) == 4500 and len(dm.val_set) == 500
    assert np.bincount(torch.stack([dm.val_set[i]["y"] for i in range(500)]).numpy()).tolist() == [50] * 10
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 1, 32, 32) and batch["y"].shape == (16,)
    assert batch["x"].min() >= -1 and batch["x"].max() <= 1
    assert torch.all(batch["x"][:, :, :2, :] == -1)  # padding is background
    dm2 = MNISTDataModule(batch_size=16, split_seed=0)
    dm2.setup()
    assert torch.equal(dm2.val_set[7]["x"], dm.val_set[7]["x"])  # same split every time


def test_mnist_resize_and_unconditional():
    dm = MNISTDataModule(batch_size=8, image_size=16, resize="resize", conditional=False)
    dm.setup()
    item = dm.train_set[0]
    assert item["x"].shape == (1, 16, 16) and "y" not in item


def test_digits_datamodule():
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (32, 1, 16, 16) and b["y"].max() <= 9


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_toy2d(name):
    dm = Toy2DDataModule(name=name, num_points=1000, batch_size=100)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (100, 2) and b["x"].abs().max() < 2
    dm2 = Toy2DDataModule(name=name, num_points=1000, batch_size=100)
    dm2.setup()
    assert torch.equal(dm.train_set.fields["x"], dm2.train_set.fields["x"])


def test_toy2d_unknown_name():
    with pytest.raises(ValueError, match="two_moons"):
        Toy2DDataModule(name="spiral")


def _write_folder(root, n=6, size=12):
    for c in ["cat", "dog"]:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_labels_and_size(tmp_path):
    _write_folder(tmp_path / "imgs")
    dm = ImageFolderDataModule(path=str(tmp_path / "imgs"), image_size=8, batch_size=4, val_fraction=0.25)
    dm.setup()
    assert dm.classes == ["cat", "dog"]
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (4, 3, 8, 8) and set(b["y"].tolist()) <= {0, 1}


def test_image_folder_unreadable_file_named(tmp_path):
    _write_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    dm = ImageFolderDataModule(path=str(tmp_path / "imgs"), image_size=8, batch_size=4)
    with pytest.raises(DataError, match="broken.png"):
        dm.setup()
    dm = ImageFolderDataModule(path=str(tmp_path / "imgs"), image_size=8, batch_size=4, on_error="skip")
    dm.setup()
    assert dm.skipped == [str(bad)] and len(dm.train_set) + len(dm.val_set) == 12


def test_image_folder_missing_and_wrong_size(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataModule(path=str(tmp_path / "nope"), batch_size=2).setup()
    _write_folder(tmp_path / "imgs", size=12)
    with pytest.raises(DataError, match="expected 16x16"):
        ImageFolderDataModule(path=str(tmp_path / "imgs"), expect_size=16, batch_size=2).setup()


def test_npz_images(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 255, (20, 8, 8), dtype=np.uint8),
             labels=np.arange(20) % 2)
    dm = ImageFolderDataModule(path=str(tmp_path / "d.npz"), image_size=8, channels=1, batch_size=4)
    dm.setup()
    assert dm.train_set[0]["x"].shape == (1, 8, 8)
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no 'images'"):
        ImageFolderDataModule(path=str(tmp_path / "bad.npz"), batch_size=1).setup()


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(DataError, match="larger than the training split"):
        Toy2DDataModule(num_points=50, batch_size=100).setup()


def test_cifar10_pickles_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="data_batch_1.*cifar-10-python.tar.gz"):
        CIFAR10DataModule(root=str(tmp_path), batch_size=4).setup()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(d, fh)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4, conditional=True)
    dm.setup()
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10
    assert dm.train_set[0]["x"].shape == (3, 32, 32)
