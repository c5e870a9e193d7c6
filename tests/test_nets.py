"""Networks: shapes, conditioning, and the null class."""
import pytest
import torch


def randomise_zero_init(net):
    """Zero-initialised output layers hide conditioning at init; give them weights for the test."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if torch.all(p == 0):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

from lightning_modules.nets.mlp import MLPDenoiser
from lightning_modules.nets.unet import UNet


def test_unet_shapes_and_zero_init_output():
    net = UNet(in_channels=3, out_channels=6, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,), image_size=16)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([3, 700]))
    assert out.shape == (2, 6, 16, 16)
    assert torch.all(out == 0)  # output conv is zero-initialised


def test_unet_class_and_null_class_differ():
    torch.manual_seed(0)
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8, num_classes=3)
    randomise_zero_init(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    a = net(x, t, y=torch.tensor([0, 0]))
    b = net(x, t, y=torch.tensor([-1, -1]))
    c = net(x, t)  # no labels = null class
    assert not torch.allclose(a, b) and torch.allclose(b, c)
    with pytest.raises(ValueError, match="out of range"):
        net(x, t, y=torch.tensor([7, 0]))


def test_unet_cross_attention_context():
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), image_size=8, context_dim=5)
    randomise_zero_init(net)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([1])
    assert not torch.allclose(net(x, t, context=torch.randn(1, 3, 5)), net(x, t, context=torch.randn(1, 3, 5)))


def test_unet_bad_input():
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, H, W\)"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, channel_mult=(1, 2, 2, 2), image_size=12)


def test_unet_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    a = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8)
    b = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8,
             gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    for n in (a, b):
        n(x, t).pow(2).sum().backward()
    ga = [p.grad for p in a.parameters()]
    gb = [p.grad for p in b.parameters()]
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(ga, gb) if u is not None)


def test_mlp_denoiser():
    net = MLPDenoiser(dim=2, hidden=16, depth=2, num_classes=4)
    assert net(torch.randn(5, 2), torch.arange(5), y=torch.arange(5) % 4).shape == (5, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        net(torch.randn(5, 3), torch.arange(5))


def test_cifar10_unet_matches_ddpm_paper_size():
    """Ho et al. 2020 report 35.7M parameters for their CIFAR-10 model."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ddpm_cifar10"])
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(35.7, abs=0.05)
