"""Noise schedules, the forward process and the posterior against the papers' closed forms."""
import math

import pytest
import torch

from lightning_modules.diffusion.schedule import NoiseSchedule, make_betas, rescale_zero_terminal_snr


def test_linear_betas_match_ddpm_paper():
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_cosine_alpha_bar_closed_form():
    T, s = 1000, 0.008
    sched = NoiseSchedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 10, 500, 900]:
        expected = f(t + 1) / f(0)
        assert sched.alphas_cumprod64[t].item() == pytest.approx(expected, rel=1e-9)
    assert make_betas("cosine", T).max() <= 0.999


def test_scaled_linear_and_sigmoid():
    b = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert b[0].item() == pytest.approx(0.00085) and b[-1].item() == pytest.approx(0.012)
    assert torch.allclose(b.sqrt()[1:] - b.sqrt()[:-1], (b.sqrt()[1] - b.sqrt()[0]).expand(999))
    sig = make_betas("sigmoid", 1000)
    abar = torch.cumprod(1 - sig, 0)
    assert (sig > 0).all() and (abar[1:] <= abar[:-1]).all() and abar[-1] < 1e-3


def test_schedules_match_diffusers_betas():
    from diffusers import DDPMScheduler

    for ours, theirs, kw in [("linear", "linear", {}), ("scaled_linear", "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
                             ("cosine", "squaredcos_cap_v2", {})]:
        d = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw)
        s = NoiseSchedule(ours, 1000, **kw)
        assert torch.allclose(s.betas, d.betas.float(), atol=1e-7), ours
        assert torch.allclose(s.alphas_cumprod, d.alphas_cumprod.float(), atol=1e-6), ours


def test_q_sample_is_ddpm_eq4():
    s = NoiseSchedule("linear", 1000)
    x0, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.tensor([0, 10, 100, 500, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(s.q_sample(x0, t, eps), abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-6)


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1}|x_t,x_0) from Bayes' rule on q(x_{t-1}|x_0) and q(x_t|x_{t-1}), computed independently."""
    s = NoiseSchedule("cosine", 200)
    x0, xt = torch.randn(4, 6), torch.randn(4, 6)
    t = torch.tensor([1, 5, 100, 199])
    betas = s.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    mean, var, logvar = s.q_posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        a_prev, alpha, beta = abar[ti - 1], 1 - betas[ti], betas[ti]
        prec = 1 / (1 - a_prev) + alpha / beta
        v = 1 / prec
        m = v * (a_prev.sqrt() * x0[i].double() / (1 - a_prev) + alpha.sqrt() * xt[i].double() / beta)
        assert torch.allclose(mean[i].double(), m, atol=1e-5)
        assert var[i].item() == pytest.approx(v.item(), rel=1e-5)
        assert logvar[i].exp().item() == pytest.approx(v.item(), rel=1e-4)


def test_posterior_at_t0_returns_x0():
    s = NoiseSchedule("linear", 1000)
    x0, xt = torch.randn(2, 3), torch.randn(2, 3)
    mean, var, _ = s.q_posterior(x0, xt, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-6) and torch.all(var == 0)


def test_zero_terminal_snr_rescale():
    b = rescale_zero_terminal_snr(make_betas("scaled_linear", 1000, 0.00085, 0.012))
    abar = torch.cumprod(1 - b, 0)
    assert abar[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert abar[0].item() == pytest.approx((1 - 0.00085), rel=1e-9)
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as ref

    # diffusers computes in float32; we compute in float64
    assert torch.allclose(b.float(), ref(make_betas("scaled_linear", 1000, 0.00085, 0.012).float()), rtol=2e-4, atol=1e-7)


def test_bad_schedule_settings():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="num_timesteps"):
        make_betas("linear", 0)
    s = NoiseSchedule("linear", 10)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        s.check_timesteps(torch.tensor([10]))


def test_schedule_buffers_saved_in_state_dict():
    s = NoiseSchedule("cosine", 50)
    sd = s.state_dict()
    assert "alphas_cumprod" in sd and "alphas_cumprod64" not in sd
    s2 = NoiseSchedule("linear", 50)
    s2.load_state_dict(sd)
    assert torch.equal(s2.alphas_cumprod, s.alphas_cumprod)
