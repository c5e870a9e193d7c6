"""Latent diffusion parts on their own: autoencoder, KL, tokenizer, captions, caption folders."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Normal, kl_divergence

from datamodules.base import DataError
from datamodules.caption_folder import CaptionFolderDataModule
from datamodules.captioned_mnist import NUMBER_WORDS, CaptionedMNISTDataModule, all_captions, caption
from lightning_modules.autoencoder import AutoencoderModule, estimate_scale_factor, psnr
from lightning_modules.nets.autoencoder import Autoencoder, DiagonalGaussian
from lightning_modules.nets.patch_discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from lightning_modules.nets.text_encoder import TransformerTextEncoder
from lightning_modules.nets.tokenizer import BOS, EOS, PAD, UNK, WordTokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("f,latent", [(4, (4, 8, 8)), (8, (4, 4, 4))])
def test_autoencoder_shapes(f, latent):
    ae = Autoencoder(in_channels=1, latent_channels=4, downsample_factor=f, base_channels=8)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    post = ae.encode(x)
    assert tuple(post.mean.shape[1:]) == latent == ae.latent_shape((1, 32, 32))
    assert post.logvar.shape == post.mean.shape
    assert ae.decode(post.sample()).shape == x.shape
    rec, _ = ae(x)
    assert rec.shape == x.shape
    with pytest.raises(ValueError, match="downsampling factor"):
        ae.latent_shape((1, 30, 30))
    with pytest.raises(ValueError, match="channel_mult"):
        Autoencoder(downsample_factor=f, channel_mult=[1, 2])
    with pytest.raises(ValueError, match="power of two"):
        Autoencoder(downsample_factor=6)


def test_kl_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    ours = DiagonalGaussian(mean, logvar).kl()
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4)).kl(), torch.zeros(2))


def test_latent_scale_is_one_over_std():
    torch.manual_seed(0)
    ae = Autoencoder(1, 4, 4, base_channels=8)
    x = torch.rand(40, 1, 32, 32) * 2 - 1
    s = estimate_scale_factor(ae, x, batch_size=16, seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = torch.cat([ae.encode(x[i:i + 16]).sample(g) for i in range(0, 40, 16)])
    assert s == pytest.approx(1.0 / z.std().item(), rel=1e-5)
    with torch.no_grad():
        assert (z * s).std().item() == pytest.approx(1.0, rel=1e-4)


def test_psnr_and_gan_losses():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x + 0.2, x).tolist() == pytest.approx([10 * np.log10(4 / 0.04)] * 2, rel=1e-5)
    d = PatchDiscriminator(1, 8, 2)
    logits = d(torch.randn(2, 1, 32, 32))
    assert logits.ndim == 4 and logits.shape[1] == 1
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert hinge_g_loss(torch.full((4,), 3.0)).item() == -3.0


def test_gan_autoencoder_uses_two_optimisers():
    from functools import partial

    mod = AutoencoderModule(Autoencoder(1, 4, 4, 8), partial(torch.optim.Adam, lr=1e-3),
                            discriminator=PatchDiscriminator(1, 8, 2), disc_optimizer=partial(torch.optim.Adam, lr=1e-4))
    assert not mod.automatic_optimization
    opt_ae, opt_d = mod.configure_optimizers()
    ae_ids = {id(p) for g in opt_ae.param_groups for p in g["params"]}
    assert ae_ids == {id(p) for p in mod.autoencoder.parameters()}
    assert {id(p) for g in opt_d.param_groups for p in g["params"]} == {id(p) for p in mod.discriminator.parameters()}
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    rec, post = mod.autoencoder(x)
    loss, logs = mod.ae_loss(x, rec, post)  # adaptive GAN weight from decoder gradients
    assert "g_loss" in logs and torch.isfinite(loss) and logs["disc_weight"] > 0


def test_tokenizer_round_trip_padding_and_vocab_in_state_dict():
    tok = WordTokenizer(max_length=8).fit(["A handwritten seven", "the digit 7, written thinly"])
    ids, mask = tok.encode(["a handwritten 7", "", "the digit seven , written thinly and boldly"])
    assert tok.decode(ids[:1]) == ["a handwritten 7"]
    assert ids[1, :2].tolist() == [BOS, EOS] and mask[1].tolist() == [True, True] + [False] * 6
    assert mask.tolist() == (ids != PAD).tolist() and mask.sum(1).tolist() == [5, 2, 8]
    assert ids[2, -1].item() == EOS  # truncated to max_length, still closed by <eos>
    assert tok.encode(["a purple 7"])[0][0, 2].item() == UNK
    restored = WordTokenizer(max_length=8)
    restored.load_state_dict(tok.state_dict())
    assert restored.words == tok.words and torch.equal(restored.encode(["the digit 7"])[0], tok.encode(["the digit 7"])[0])
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer(max_vocab=6).fit(["one two three"])
    enc = TransformerTextEncoder(tok, dim=16, num_layers=1, heads=2)
    assert enc(*enc.tokenize(["a handwritten 7", ""])).shape == (2, 8, 16)


def test_captions_are_deterministic_and_name_the_right_digit():
    words = {w: i for i, w in enumerate(NUMBER_WORDS)}
    for seed in (0, 1):
        for i in range(200):
            label = i % 10
            c = caption(label, i, seed)
            assert c == caption(label, i, seed)
            numbers = [words[t] if t in words else int(t) for t in c.replace(",", " ").split()
                       if t in words or t.isdigit()]
            assert numbers == [label], c
    assert len({caption(3, i, 0) for i in range(100)}) > 5  # varied templates
    assert caption(3, 5, 0) != caption(3, 5, 1) or caption(3, 6, 0) != caption(3, 6, 1)
    assert "a handwritten digit 3" in all_captions()


def test_captioned_mnist_batches():
    dm = CaptionedMNISTDataModule(batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["x"].shape == (8, 1, 32, 32) and batch["y"].shape == (8,)
    assert isinstance(batch["text"], list) and len(batch["text"]) == 8
    for t, y in zip(batch["text"], batch["y"].tolist()):
        assert str(y) in t or NUMBER_WORDS[y] in t.split()


def _write_images(folder, names, size=8):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(folder / n)


def test_caption_folder_reads_csv_and_jsonl(tmp_path):
    _write_images(tmp_path / "a", ["x.png", "y.png", "z.png"])
    (tmp_path / "a" / "captions.csv").write_text("file,caption\nx.png,a red car\ny.png,\"a dog, running\"\nz.png,sky\n")
    dm = CaptionFolderDataModule(str(tmp_path / "a"), image_size=8, batch_size=2, val_fraction=0.34)
    dm.setup()
    assert sorted(dm.texts) == ["a dog, running", "a red car", "sky"] and dm.data_shape == (3, 8, 8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 3, 8, 8) and len(batch["text"]) == 2
    _write_images(tmp_path / "b", ["x.png", "y.png"])
    (tmp_path / "b" / "captions.jsonl").write_text(json.dumps({"file": "x.png", "text": "one"}) + "\n"
                                                   + json.dumps({"file": "y.png", "caption": "two"}) + "\n")
    dm = CaptionFolderDataModule(str(tmp_path / "b"), image_size=8, batch_size=1, val_fraction=0.5)
    dm.setup()
    assert sorted(dm.caption_corpus()) == ["one", "two"]


def test_caption_folder_errors_name_the_files(tmp_path):
    mk = lambda sub, **kw: CaptionFolderDataModule(str(tmp_path / sub), image_size=8, batch_size=1, **kw)  # noqa: E731
    with pytest.raises(DataError, match="does not exist"):
        mk("nowhere").setup()
    _write_images(tmp_path / "c", ["x.png"])
    with pytest.raises(DataError, match="captions.csv not found"):
        mk("c").setup()
    (tmp_path / "c" / "captions.csv").write_text("file,caption\nx.png,ok\nmissing.png,gone\n")
    with pytest.raises(DataError, match="missing.png"):
        mk("c").setup()
    (tmp_path / "c" / "captions.csv").write_text("file,caption\nx.png,ok\nbad.png,broken\n")
    (tmp_path / "c" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        mk("c").setup()
    (tmp_path / "c" / "bad.png").unlink()
    _write_images(tmp_path / "c", ["y.png", "w.png"])
    (tmp_path / "c" / "captions.csv").write_text("file,caption\nx.png,ok\n")
    with pytest.raises(DataError, match="no caption.*w.png, y.png"):
        mk("c").setup()
    (tmp_path / "c" / "captions.csv").write_text("name,text\nx.png,ok\n")
    with pytest.raises(DataError, match="header"):
        mk("c").setup()
