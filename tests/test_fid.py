"""FID/KID: our pipeline against clean-fid's own code, the digits classifier, the statistics cache, the resolver."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.mnist import MNISTDataModule
from kakusan.errors import UserError
from kakusan.weights import REGISTRY, WeightSpec, resolve_weights
from lightning_modules.metrics.digits_classifier import class_accuracy, digits_features
from lightning_modules.metrics.fid import (FrechetDistance, KernelDistance, compute_fid, feature_stats,
                                           fid_from_features, kernel_distance)
from lightning_modules.metrics.reference_stats import real_images, reference_stats


@pytest.fixture(scope="module")
def mnist():
    dm = MNISTDataModule(conditional=True, split_seed=0)
    dm.setup()
    val = dm.val_set
    x_val = torch.stack([val[i]["x"] for i in range(len(val))])
    y_val = torch.stack([val[i]["y"] for i in range(len(val))])
    train = real_images(dm, 1500, "train")   # a seeded random subset: the split itself is ordered by class
    return {"val": x_val, "val_y": y_val, "train": train, "train_feats": digits_features(train)}


def test_inception_features_equal_cleanfid_clean_mode(mnist):
    """Our preprocessing + network == clean-fid's get_model_features in "clean" mode with its own
    InceptionV3W.forward (normalisation) around the same TorchScript layers."""
    from cleanfid.fid import get_model_features
    from cleanfid.inception_torchscript import InceptionV3W

    from kakusan.images import to_uint8
    from lightning_modules.metrics.inception import inception_features, load_inception

    images = mnist["val"][:2]
    ours = inception_features(images)
    assert ours.shape == (2, 2048) and torch.isfinite(ours).all() and ours.abs().sum() > 0
    assert torch.equal(ours, inception_features(images))  # deterministic

    ref = InceptionV3W.__new__(InceptionV3W)   # clean-fid's wrapper, without its download step
    torch.nn.Module.__init__(ref)
    ref.layers, ref.resize_inside = load_inception().layers, False
    as_255 = to_uint8(images).float().repeat(1, 3, 1, 1)        # what a PNG of the sample holds
    theirs = get_model_features(lambda z: as_255, ref, mode="clean", z_dim=1, num_gen=2, batch_size=2,
                                device=torch.device("cpu"), verbose=False)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-5)


def test_fid_equals_cleanfid_frechet_distance(mnist):
    from cleanfid.fid import frechet_distance as cleanfid_fd

    fake, real = mnist["val"][:200], mnist["train"][:400]
    f1, f2 = digits_features(fake).double().numpy(), digits_features(real).double().numpy()
    expected = cleanfid_fd(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert compute_fid(fake, real, extractor="digits") == pytest.approx(expected, rel=1e-6)

    metric = FrechetDistance(extractor="digits")     # streaming sums, two chunks per side
    for chunk in (fake[:120], fake[120:]):
        metric.update(chunk, real=False)
    metric.update_features(torch.from_numpy(f2[:250]), real=True)    # features may also be fed directly
    metric.update(real[250:], real=True)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-5)

    kid = KernelDistance(extractor="digits", num_subsets=20, max_subset_size=200, seed=3)
    kid.update(fake, real=False)
    kid.update_features(torch.from_numpy(f2), real=True)
    assert float(kid.compute()) == pytest.approx(kernel_distance(f1, f2, 20, 200, seed=3), rel=1e-5)
    assert kernel_distance(f1, f2, 20, 200, seed=3) == kernel_distance(f1, f2, 20, 200, seed=3)

    mu, sigma = feature_stats(f2)
    assert cleanfid_fd(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    assert compute_fid(fake, fake, extractor="digits") == pytest.approx(0.0, abs=1e-3)


def test_fid_digits_separates_real_from_noise(mnist):
    ref = mnist["train_feats"]
    real_vs_real = fid_from_features(digits_features(mnist["val"]), ref)
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_vs_real = fid_from_features(digits_features(noise), ref)
    blank = -torch.ones(500, 1, 28, 28) + 0.01 * torch.randn(500, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    blank_vs_real = fid_from_features(digits_features(blank), ref)
    ones = mnist["val"][mnist["val_y"] == 1]          # real digits, but one class only
    one_class_vs_real = fid_from_features(digits_features(ones), ref)
    assert real_vs_real * 20 < one_class_vs_real and real_vs_real * 20 < noise_vs_real
    assert real_vs_real * 20 < blank_vs_real


def test_class_accuracy_of_real_validation_digits(mnist):
    acc = class_accuracy(mnist["val"], mnist["val_y"])
    assert acc > 0.95
    acc28 = class_accuracy(mnist["val"][:, :, 2:-2, 2:-2], mnist["val_y"])  # 28x28 input is padded back
    assert acc28 == pytest.approx(acc)
    assert class_accuracy(mnist["val"], (mnist["val_y"] + 1) % 10) < 0.1
    with pytest.raises(UserError, match="MNIST-style"):
        class_accuracy(torch.zeros(2, 3, 32, 32), torch.zeros(2))


def test_reference_statistics_are_cached(mnist, tmp_path):
    real = mnist["train"][:200]
    first = reference_stats(real, "digits", tmp_path, dataset="mnist", split="train")
    files = list((tmp_path / "fid_stats").glob("*.npz"))
    assert not first["cached"] and len(files) == 1
    assert "mnist_train_32x32_digits_n200_" in files[0].name
    second = reference_stats(real, "digits", tmp_path, dataset="mnist", split="train")
    assert second["cached"]
    np.testing.assert_allclose(second["mu"], first["mu"])
    np.testing.assert_allclose(second["sigma"], first["sigma"])
    other = reference_stats(real[:150], "digits", tmp_path, dataset="mnist", split="train")
    assert not other["cached"]   # a different sample count is a different key


def test_weights_resolver_order_and_errors(tmp_path, monkeypatch):
    shipped = resolve_weights("mnist_classifier")
    assert shipped.is_file() and shipped.stat().st_size < 1_000_000
    assert resolve_weights("inception-2015-12-05").name in ("default_1.pt", "inception-2015-12-05.pt")
    monkeypatch.setenv("KAKUSAN_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "mnist_classifier.pt").write_bytes(shipped.read_bytes())
    assert resolve_weights("mnist_classifier") == tmp_path / "mnist_classifier.pt"   # local folder first
    spec = WeightSpec(files=("nowhere.pt",), description="a test weight", url="https://example.invalid/nowhere.pt",
                      how_to_get="ask the authors")
    monkeypatch.setitem(REGISTRY, "nowhere", spec)
    with pytest.raises(UserError, match=r"nowhere\.pt.*KAKUSAN_WEIGHTS_DIR"):
        resolve_weights("nowhere", allow_download=True)   # never downloads under pytest
    with pytest.raises(UserError, match="neither an existing file"):
        resolve_weights("no-such-weights")
