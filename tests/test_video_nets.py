"""Video DiT (Latte variants): shapes, zero init, which tokens each attention mixes, a training step."""
import math

import hydra
import pytest
import torch

from lightning_modules.nets.dit import DiTBlock
from lightning_modules.nets.video_dit import VARIANTS, FactorisedBlock, VideoDiT
from tests.test_dit import randomise_

SMALL = dict(num_frames=4, input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=4)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, T, N, ...) -> bool (T, N): where the two outputs differ."""
    return ((a - b).abs().flatten(3).amax(-1) > 1e-6)[0] if a.ndim > 3 else (a - b).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_shapes_zero_init_and_mixing(variant):
    net = VideoDiT(variant=variant, num_classes=10, context_dim=8, **SMALL)
    x, t, y = torch.randn(2, 4, 1, 8, 8), torch.tensor([5, 900]), torch.tensor([3, -1])
    ctx = torch.randn(2, 3, 8)
    out = net(x, t, y, context=ctx)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero: exactly zero at init
    randomise_(net)
    net.eval()
    with torch.no_grad():
        base = net(x, t, y, context=ctx)
        x2 = x.clone()
        x2[:, 1] += 1.0  # perturb frame 1 only
        diff = (net(x2, t, y, context=ctx) - base).abs().flatten(2).amax(-1)  # (B, T)
        assert (diff > 1e-5).all(), f"{variant}: temporal information must reach every frame"
        # image mode: no temporal operation, so frames are independent images
        base_i = net(x, t, y, context=ctx, independent_frames=True)
        diff_i = (net(x2, t, y, context=ctx, independent_frames=True) - base_i).abs().flatten(2).amax(-1)
        assert (diff_i[:, 1] > 1e-5).all() and (diff_i[:, [0, 2, 3]] == 0).all()
    with pytest.raises(ValueError, match="VideoDiT expects"):
        net(torch.randn(2, 4, 1, 16, 16), t)


def test_spatial_block_mixes_within_a_frame_only():
    block = DiTBlock(16, 2).eval()
    randomise_(block)
    x, c = torch.randn(1, 4, 6, 16), torch.randn(1, 16)  # (B, T, N, D)
    x2 = x.clone()
    x2[0, 2, 3] += torch.randn(16)  # one token of frame 2 (not a constant: LayerNorm would remove it)
    with torch.no_grad():
        d = changed(block(x2, c), block(x, c))  # (T, N)
    assert d[2].all() and not d[[0, 1, 3]].any()


def test_factorised_block_spatial_and_temporal_parts():
    block = FactorisedBlock(16, 2).eval()
    randomise_(block)
    x, c = torch.randn(1, 4, 6, 16), torch.randn(1, 16)
    x2 = x.clone()
    x2[0, 2, 3] += torch.randn(16)  # frame 2, patch position 3
    with torch.no_grad():
        mods = [m[:, None, None] for m in block.adaLN_modulation(c).chunk(9, dim=-1)]
        d_s = changed(block.spatial(x2, mods), block.spatial(x, mods))
        d_t = changed(block.temporal(x2, mods), block.temporal(x, mods))
        d_full = changed(block(x2, c), block(x, c))
        d_img = changed(block(x2, c, independent_frames=True), block(x, c, independent_frames=True))
    assert d_s[2].all() and not d_s[[0, 1, 3]].any()          # spatial: only within frame 2
    assert d_t[:, 3].all() and not d_t[:, [0, 1, 2, 4, 5]].any()  # temporal: only along time at position 3
    assert d_full.all()                                         # spatial then temporal: everything
    assert d_img[2].all() and not d_img[[0, 1, 3]].any()


def test_depth_and_variant_errors():
    with pytest.raises(ValueError, match="even depth"):
        VideoDiT(variant="interleaved", **{**SMALL, "depth": 3})
    with pytest.raises(ValueError, match="late_fusion"):
        VideoDiT(variant="spacetime", **SMALL)
    net = VideoDiT(variant="late_fusion", **{**SMALL, "depth": 4})
    assert net.block_kinds == ["s", "s", "t", "t"]
    assert VideoDiT(variant="interleaved", **{**SMALL, "depth": 4}).block_kinds == ["s", "t", "s", "t"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_each_variant(make_cfg, variant):
    cfg = make_cfg(["experiment=video_dit_moving_mnist", f"model.net.variant={variant}", "model.net.hidden_size=32",
                    "model.net.depth=2"])
    model = hydra.utils.instantiate(cfg.model)
    assert model.net.variant == variant and model.sample_shape == (8, 1, 16, 16)
    opt = model.optimizer_factory(params=model.net.parameters())
    torch.manual_seed(0)
    batch = {"x": torch.rand(2, 8, 1, 16, 16) * 2 - 1}
    for _ in range(2):  # the second step has non-zero adaLN weights, so every block gets gradients
        opt.zero_grad()
        loss = model.training_step(batch, 0)
        assert math.isfinite(loss.item())
        loss.backward()
        opt.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.blocks[-1].parameters())
    sampler = hydra.utils.instantiate({"_target_": "lightning_modules.diffusion.samplers.DDIMSampler", "steps": 2,
                                       "progress": False})
    clips = model.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert clips.shape == (2, 8, 1, 16, 16) and torch.isfinite(clips).all()


def test_image_batches_skip_temporal_blocks(make_cfg):
    cfg = make_cfg(["experiment=video_dit_moving_mnist", "model.net.hidden_size=32", "model.net.depth=2",
                    "model.image_batch_prob=1.0"])
    model = hydra.utils.instantiate(cfg.model)
    model.train()
    assert model.net_conditions({"x": torch.zeros(1)}) == {"independent_frames": True}
    model.eval()
    assert model.net_conditions({"x": torch.zeros(1)}) == {}  # never in validation / sampling


@pytest.mark.parametrize("temporal", [False, True])
def test_conv_stem_and_head_start_at_zero_train_and_keep_frames_apart_in_image_mode(temporal):
    net = VideoDiT(variant="interleaved", conv_stem=2, conv_width=8, conv_temporal=temporal, **SMALL)
    plain = VideoDiT(variant="interleaved", **SMALL)
    assert net.stem is not None and plain.stem is None and net.x_embedder.in_channels == 8
    x, t = torch.randn(2, 4, 1, 8, 8), torch.tensor([5, 900])
    out = net(x, t)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # still exactly zero at init
    # the zero start is not a dead start: the final layer gets a gradient through the head
    net(x, t).sub(x).square().mean().backward()
    assert net.final_layer.linear.weight.grad.abs().sum() > 0 and net.head.bias.grad.abs().sum() > 0
    randomise_(net)
    net.eval()
    with torch.no_grad():
        base = net(x, t, independent_frames=True)
        x2 = x.clone()
        x2[:, 2] += 1.0
        diff = (net(x2, t, independent_frames=True) - base).abs().flatten(2).amax(-1)
        assert (diff[:, 2] > 1e-5).all() and (diff[:, [0, 1, 3]] == 0).all()  # the convs act frame by frame
    assert isinstance(net.stem[0], torch.nn.Conv3d if temporal else torch.nn.Conv2d)
    if temporal:  # in video mode the 3-D stem and head carry each frame one frame further per layer
        small = {**SMALL, "num_frames": 8}
        convs_only = VideoDiT(variant="interleaved", conv_stem=1, conv_width=8, conv_temporal=True, **small)
        randomise_(convs_only)
        convs_only.block_kinds = ["s", "s"]  # no temporal attention: only the convolutions cross frames
        convs_only.temp_embed.zero_()
        convs_only.eval()
        x3 = torch.randn(2, 8, 1, 8, 8)
        x4 = x3.clone()
        x4[:, 7] += 1.0
        with torch.no_grad():
            reach = (convs_only(x4, t) - convs_only(x3, t)).abs().flatten(2).amax(-1)
        assert (reach[:, :5] == 0).all() and (reach[:, 5:] > 1e-5).all()  # stem + head: frames 5, 6, 7 only
    with pytest.raises(ValueError, match="conv_stem must be >= 0"):
        VideoDiT(conv_stem=-1, **SMALL)
