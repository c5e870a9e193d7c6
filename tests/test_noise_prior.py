"""The frame-correlated video noise prior (PYoCo): its statistics, the samplers' use of it, and the
video module's training and sampling with it."""
from __future__ import annotations

import pytest
import torch

from kakusan.errors import UserError
from lightning_modules.diffusion.noise_prior import correlated_noise, frame_correlation, noise_fn
from lightning_modules.diffusion.samplers import DDIMSampler, DDPMSampler
from lightning_modules.diffusion.schedule import NoiseSchedule
from lightning_modules.nets.video_dit import VideoDiT
from lightning_modules.video_diffusion import VideoDiffusionModule


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def frame_corr(x: torch.Tensor) -> torch.Tensor:
    """Empirical correlation matrix between the frames (dim 1) of ``x``, pooled over everything else."""
    return torch.corrcoef(x.transpose(0, 1).reshape(x.shape[1], -1).double())


@pytest.mark.parametrize("kind,alpha", [("independent", 1.0), ("mixed", 1.0), ("mixed", 3.0), ("progressive", 2.0)])
def test_noise_has_unit_marginals_and_the_stated_frame_correlation(kind, alpha):
    x = correlated_noise((6000, 8, 2, 3), kind, alpha, frame_dim=1, generator=gen())
    assert x.shape == (6000, 8, 2, 3)
    std = x.transpose(0, 1).reshape(8, -1).std(1)
    assert torch.allclose(std, torch.ones(8), atol=0.03)
    c = frame_corr(x)
    for lag in (1, 3, 7):
        assert c[0, lag].item() == pytest.approx(frame_correlation(kind, alpha, lag), abs=0.03)
        assert c[7 - lag, 7].item() == pytest.approx(frame_correlation(kind, alpha, lag), abs=0.03)


def test_closed_form_correlations_and_other_frame_axes():
    assert frame_correlation("mixed", 1.0, 5) == pytest.approx(0.5)
    assert frame_correlation("progressive", 1.0, 2) == pytest.approx(0.5)  # (1/sqrt 2)^2
    assert frame_correlation("independent", 4.0, 1) == 0.0 and frame_correlation("mixed", 0.0, 3) == 0.0
    # frames along the last axis: the same statistics
    x = correlated_noise((4000, 3, 5), "mixed", 2.0, frame_dim=-1, generator=gen(1))
    c = torch.corrcoef(x.movedim(-1, 0).reshape(5, -1))
    assert c[1, 4].item() == pytest.approx(0.8, abs=0.03)


def test_same_seed_same_noise_and_independent_is_plain_randn():
    a = correlated_noise((2, 4, 3), "progressive", 1.0, generator=gen(0))
    b = correlated_noise((2, 4, 3), "progressive", 1.0, generator=gen(0))
    assert torch.equal(a, b) and not torch.equal(a, correlated_noise((2, 4, 3), "progressive", 1.0, generator=gen(1)))
    assert torch.equal(correlated_noise((2, 4, 3), "independent", generator=gen(3)), torch.randn((2, 4, 3), generator=gen(3)))


@pytest.mark.parametrize("kind,alpha,dim,match", [("shared", 1.0, 1, "unknown noise prior"),
                                                   ("mixed", -1.0, 1, ">= 0"),
                                                   ("mixed", float("nan"), 1, ">= 0"),
                                                   ("mixed", 1.0, 3, "out of range")])
def test_bad_prior_settings_raise(kind, alpha, dim, match):
    with pytest.raises(ValueError, match=match):
        correlated_noise((2, 4, 3), kind, alpha, frame_dim=dim)


def zero_x0_model(x, t):
    return torch.zeros_like(x)  # predicts x0 = 0: every sampler step is linear in its noise draws


def last_noisy_state(sampler, schedule, shape, **kw):
    """The DDPM state before its final step (the final step maps x0 = 0 to exactly 0)."""
    states = []
    sampler.sample(zero_x0_model, schedule, shape, "x0", step_hook=lambda x, t, i: states.append(x) or x, **kw)
    return states[-2]


def test_ddpm_draws_every_step_from_the_prior():
    """With x0 predicted as 0, a DDPM state is a sum of x_T and the step noises. Its frames correlate
    exactly as the prior's only if every draw, not just x_T, comes from the prior."""
    schedule = NoiseSchedule(kind="linear", num_timesteps=1000)
    shape = (3000, 6, 4)
    sampler = DDPMSampler(steps=10, clip_x0=False, progress=False)
    prior = last_noisy_state(sampler, schedule, shape, generator=gen(0), noise_fn=noise_fn("mixed", 1.0))
    assert frame_corr(prior)[0, 5].item() == pytest.approx(0.5, abs=0.04)
    # only x_T from the prior, fresh steps independent: the correlation is washed out
    x_T = correlated_noise(shape, "mixed", 1.0, generator=gen(0))
    washed = last_noisy_state(sampler, schedule, shape, generator=gen(1), x_T=x_T)
    assert frame_corr(washed)[0, 5].item() < 0.1
    # the independent prior is bit for bit the default draw
    a = sampler.sample(zero_x0_model, schedule, (2, 6, 4), "x0", generator=gen(2), noise_fn=noise_fn("independent"))
    b = sampler.sample(zero_x0_model, schedule, (2, 6, 4), "x0", generator=gen(2))
    assert torch.equal(a, b)


def test_deterministic_ddim_starts_from_the_priors_x_T():
    schedule = NoiseSchedule(kind="linear", num_timesteps=1000)
    sampler = DDIMSampler(steps=5, clip_x0=False, progress=False)
    model = lambda x, t: 0.1 * x  # noqa: E731 - any deterministic eps model
    fn = noise_fn("progressive", 1.5)
    drawn = sampler.sample(model, schedule, (2, 5, 3), "eps", generator=gen(4), noise_fn=fn)
    given = sampler.sample(model, schedule, (2, 5, 3), "eps", x_T=fn((2, 5, 3), gen(4), "cpu"))
    assert torch.equal(drawn, given)


def tiny_video_module(**kw):
    net = VideoDiT(num_frames=4, variant="factorised", input_size=8, patch_size=4, in_channels=1, hidden_size=32,
                   depth=2, num_heads=2)
    return VideoDiffusionModule(net=net, schedule=NoiseSchedule(kind="linear", num_timesteps=1000),
                                sampler=DDIMSampler(steps=3, progress=False), optimizer=torch.optim.AdamW,
                                sample_shape=[4, 1, 8, 8], ema_decay=None, **kw)


def test_video_module_trains_and_samples_with_the_prior():
    module = tiny_video_module(noise_prior="mixed", noise_prior_alpha=2.0)
    noise = module.draw_noise((5000, 4, 1, 2, 2), gen(0))
    assert frame_corr(noise)[0, 3].item() == pytest.approx(0.8, abs=0.03)
    loss = module.diffusion_loss(torch.rand(2, 4, 1, 8, 8) * 2 - 1, {}, generator=gen(0))
    assert torch.isfinite(loss) and loss.requires_grad
    # samples: seeded, and they start from the prior (a different x_T than the independent prior's)
    with torch.no_grad():
        for p in module.net.parameters():  # a non-zero network, so the samples depend on x_T
            p.add_(0.05 * torch.randn(p.shape, generator=gen(9)))
    a, b = module.sample(2, generator=gen(0)), module.sample(2, generator=gen(0))
    assert torch.equal(a, b)
    plain = tiny_video_module()
    plain.load_state_dict(module.state_dict())
    assert not torch.equal(plain.sample(2, generator=gen(0)), a)
    assert module.hparams.noise_prior == "mixed" and module.hparams.noise_prior_alpha == 2.0


def test_video_module_names_a_bad_prior():
    with pytest.raises(UserError, match="model.noise_prior: unknown noise prior 'shared'"):
        tiny_video_module(noise_prior="shared")
    with pytest.raises(UserError, match="model.noise_prior: .*>= 0"):
        tiny_video_module(noise_prior="progressive", noise_prior_alpha=-2)
