"""DiT: the paper's parameter counts, adaLN-Zero init, patchify layout, conditioning, a training step."""
import math

import hydra
import numpy as np
import pytest
import torch

from lightning_modules.nets.dit import DiT, dit_from_name, sincos_2d

TINY = dict(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=4)


def randomise_(net: torch.nn.Module, seed: int = 0) -> None:
    """Give every weight (zero-initialised adaLN/output layers included) a random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("name,millions", [("DiT-S/2", 33), ("DiT-B/2", 130), ("DiT-L/2", 458), ("DiT-XL/2", 675)])
def test_param_counts_match_dit_paper_table1(name, millions):
    with torch.device("meta"):  # no memory, no time: only shapes
        net = dit_from_name(name, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    n = sum(p.numel() for p in net.parameters())
    assert round(n / 1e6) == millions
    if name == "DiT-XL/2":  # the official script prints 675,129,632 (its count includes the fixed pos_embed)
        assert n + net.pos_embed.numel() == 675_129_632


def test_named_sizes_and_bad_name():
    with torch.device("meta"):
        net = dit_from_name("DiT-S/8", input_size=32, in_channels=4)
    assert net.patch_size == 8 and len(net.blocks) == 12 and net.pos_embed.shape == (1, 16, 384)
    with pytest.raises(ValueError, match="DiT-XL/2"):
        dit_from_name("DiT-M/2")


def test_adaln_zero_init_outputs_exactly_zero():
    net = DiT(**TINY, num_classes=10, context_dim=8)
    out = net(torch.randn(3, 1, 16, 16), torch.tensor([1, 500, 999]), torch.tensor([0, 5, -1]),
              context=torch.randn(3, 5, 8))
    assert out.shape == (3, 1, 16, 16) and torch.count_nonzero(out) == 0
    for block in net.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    assert DiT(**TINY, learn_sigma=True)(torch.randn(1, 1, 16, 16), torch.tensor([3])).shape == (1, 2, 16, 16)


def test_patchify_unpatchify_round_trip_and_token_layout():
    net = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=1, num_heads=2)
    x = torch.randn(2, 3, 8, 8)
    tokens = net.patchify(x)
    assert tokens.shape == (2, 16, 12)
    assert torch.equal(net.unpatchify(tokens, 3), x)
    # token (row 1, column 2) holds pixels [2:4, 4:6], ordered (dy, dx, channel)
    assert torch.equal(tokens[0, 1 * 4 + 2], x[0, :, 2:4, 4:6].permute(1, 2, 0).reshape(-1))


def test_sincos_position_embedding_matches_mae_formula():
    dim, g = 16, 3
    emb = sincos_2d(dim, g, g).numpy()

    def one_d(d, pos):  # MAE's get_1d_sincos_pos_embed_from_grid, written out
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))  # MAE: grid[0] is w
    ref = np.concatenate([one_d(dim // 2, gw.reshape(-1)), one_d(dim // 2, gh.reshape(-1))], axis=1)
    np.testing.assert_allclose(emb, ref, atol=1e-6)


def test_class_null_label_context_and_mask():
    net = DiT(**TINY, num_classes=10, context_dim=8).eval()
    randomise_(net)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 20])
    with torch.no_grad():
        assert torch.allclose(net(x, t, torch.tensor([-1, -1])), net(x, t))  # None = null class
        assert not torch.allclose(net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([4, 4])))
        ctx = torch.randn(2, 4, 8)
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
        masked = net(x, t, context=ctx, context_mask=mask)
        assert torch.allclose(masked[:1], net(x[:1], t[:1], context=ctx[:1, :2]), atol=1e-5)
        assert not torch.allclose(net(x, t, context=ctx), net(x, t, context=ctx + 1))
    with pytest.raises(ValueError, match="num_classes"):
        DiT(**TINY)(x, t, torch.tensor([1, 2]))


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = DiT(**TINY, num_classes=10)
    randomise_(a)
    b = DiT(**TINY, num_classes=10, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.tensor([3, -1])
    for net in (a, b):
        net.train()
        net(x, t, y).square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_dit_mnist_config_trains_one_step(make_cfg):
    cfg = make_cfg(["experiment=dit_mnist", "model.num_classes=10", "model.cond_drop_prob=0.2"])
    model = hydra.utils.instantiate(cfg.model)
    assert type(model.net).__name__ == "DiT" and model.net.patch_size == 4 and len(model.net.blocks) == 6
    opt = model.optimizer_factory(params=model.net.parameters())
    batch = {"x": torch.rand(4, 1, 32, 32) * 2 - 1, "y": torch.tensor([0, 1, 2, 3])}
    loss = model.training_step(batch, 0)
    assert math.isfinite(loss.item())
    loss.backward()
    assert model.net.final_layer.linear.weight.grad.abs().sum() > 0  # the zero layer learns first
    opt.step()
    x = model.sample(2, generator=torch.Generator().manual_seed(0), sampler=hydra.utils.instantiate(
        {"_target_": "lightning_modules.diffusion.samplers.DDIMSampler", "steps": 3, "progress": False}))
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
