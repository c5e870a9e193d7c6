"""DDIM and DPM-Solver++(2M): validation, exact identities, convergence, zero terminal SNR, guidance."""
from __future__ import annotations

import hydra
import pytest
import torch

from lightning_modules.diffusion.guidance import guided_model_fn
from lightning_modules.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from lightning_modules.diffusion.schedule import NoiseSchedule
from lightning_modules.nets.unet import UNet

C = 0.5  # data ~ N(0, C^2) per dimension: the ideal denoiser and the exact ODE solution are known


def gaussian_model(schedule: NoiseSchedule, prediction_type: str):
    """The exact (Bayes-optimal) denoiser for N(0, C^2) data, in the requested parameterisation."""
    abar = schedule.alphas_cumprod64

    def model_fn(x, t):
        ab = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = (a * C ** 2 / (ab * C ** 2 + 1 - ab)) * x.double()
        eps = (x.double() - a * x0) / s if prediction_type != "eps" else (s / (ab * C ** 2 + 1 - ab)) * x.double()
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction_type]
        return out.float()

    return model_fn


def exact_ode_solution(schedule: NoiseSchedule, x_T, t_first: int, abar_end):
    """Probability-flow ODE from t_first to ``abar_end`` for Gaussian data: x scales with sqrt(abar C^2 + 1 - abar)."""
    ab = schedule.alphas_cumprod64[t_first]
    return (x_T.double() * ((abar_end * C ** 2 + 1 - abar_end) / (ab * C ** 2 + 1 - ab)).sqrt()).float()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ validation before sampling
def test_bad_settings_fail_before_sampling():
    schedule = NoiseSchedule("linear", 100)
    calls = []
    model = lambda x, t: calls.append(1) or x  # noqa: E731
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 100\]"):
        DDIMSampler(steps=101, progress=False).sample(model, schedule, (2, 3))
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 100\]"):
        DPMSolverSampler(steps=500, progress=False).sample(model, schedule, (2, 3))
    assert not calls
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'"):
        DDIMSampler(steps=10, spacing="uniform")
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        DPMSolverSampler(steps=10, spacing="quadratic")
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        DDIMSampler(steps=10, eta=-0.1)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        DDIMSampler(steps=10, eta=1.5)
    with pytest.raises(ValueError, match="final_sigmas"):
        DPMSolverSampler(steps=10, final_sigmas="one")


def test_configs_compose_and_validate(make_cfg):
    cfg = make_cfg(["sampler=ddim", "sampler.steps=25", "sampler.eta=0.5"])
    sampler = hydra.utils.instantiate(cfg.sampler)
    assert isinstance(sampler, DDIMSampler) and sampler.steps == 25 and sampler.eta == 0.5
    cfg = make_cfg(["sampler=dpm_solver"], sub="b")
    assert isinstance(hydra.utils.instantiate(cfg.sampler), DPMSolverSampler)
    # impossible settings fail in validate(), which DiffusionModule calls at construction
    cfg = make_cfg(["sampler=ddim", "sampler.steps=5000"], sub="c")
    sampler = hydra.utils.instantiate(cfg.model.sampler)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        sampler.validate(hydra.utils.instantiate(cfg.model.schedule))


def test_ddim_mnist_experiment_uses_ddim50(make_cfg):
    cfg = make_cfg(["experiment=ddim_mnist"])
    assert cfg.model.prediction_type == "eps" and cfg.data._target_.endswith("MNISTDataModule")
    sampler = hydra.utils.instantiate(cfg.sampler)
    assert isinstance(sampler, DDIMSampler) and sampler.steps == 50 and sampler.eta == 0.0


# ------------------------------------------------------------------ exact identities
def test_ddim_eta1_equals_ddpm_posterior():
    """With eta=1 the DDIM variance is the posterior variance and DDIM is exactly ancestral DDPM."""
    schedule = NoiseSchedule("cosine", 200)
    model = gaussian_model(schedule, "eps")
    x_T = torch.randn(4, 6, generator=gen(1))
    for spacing in ("linspace", "trailing"):
        a = DDIMSampler(40, spacing, eta=1.0, clip_x0=False, progress=False).sample(model, schedule, x_T.shape, "eps", gen(2), x_T=x_T)
        b = DDPMSampler(40, spacing, clip_x0=False, progress=False).sample(model, schedule, x_T.shape, "eps", gen(2), x_T=x_T)
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("sampler", [DDIMSampler(20, "trailing", clip_x0=False, progress=False),
                                     DPMSolverSampler(20, "trailing", clip_x0=False, progress=False)])
def test_parameterisations_give_the_same_samples(sampler):
    schedule = NoiseSchedule("linear", 1000)
    x_T = torch.randn(3, 5, generator=gen(3))
    outs = [sampler.sample(gaussian_model(schedule, p), schedule, x_T.shape, p, x_T=x_T) for p in ("eps", "x0", "v")]
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


def test_dpm_solver_is_second_order_and_beats_ddim():
    """On Gaussian data the ODE solution is known. Both solvers end at abar[0] (DDIM
    set_alpha_to_one=False, DPM final_sigmas=sigma_min): doubling the steps halves DDIM's error
    (first order) and quarters DPM-Solver++(2M)'s (second order)."""
    schedule = NoiseSchedule("linear", 1000)
    model = gaussian_model(schedule, "x0")
    x_T = torch.randn(64, 4, generator=gen(4))
    exact = exact_ode_solution(schedule, x_T, 999, schedule.alphas_cumprod64[0])
    err = {}
    for n in (50, 100, 200):
        for s in (DDIMSampler(n, "linspace", set_alpha_to_one=False, clip_x0=False, progress=False),
                  DPMSolverSampler(n, "linspace", final_sigmas="sigma_min", clip_x0=False, progress=False)):
            err[s.name, n] = (s.sample(model, schedule, x_T.shape, "x0", x_T=x_T) - exact).abs().max().item()
    assert 1.8 < err["ddim", 100] / err["ddim", 200] < 2.2
    assert err["dpm_solver", 50] / err["dpm_solver", 100] > 3.3 and err["dpm_solver", 100] / err["dpm_solver", 200] > 3.3
    assert err["dpm_solver", 200] < err["ddim", 200] / 3


@pytest.mark.parametrize("shape", [(3, 2), (2, 17, 3), (2, 3, 1, 8, 8), (2, 1, 8, 8)])
def test_samplers_work_for_any_data_shape(shape):
    schedule = NoiseSchedule("linear", 50)
    model = lambda x, t: 0.3 * torch.tanh(x)  # noqa: E731
    for sampler in (DDIMSampler(5, eta=0.5, progress=False), DPMSolverSampler(5, progress=False)):
        out = sampler.sample(model, schedule, shape, "eps", gen(0))
        assert out.shape == shape and torch.isfinite(out).all()


def test_same_generator_same_samples_and_hook():
    schedule = NoiseSchedule("linear", 100)
    model = lambda x, t: 0.5 * x  # noqa: E731
    s = DDIMSampler(10, eta=1.0, progress=False)
    a, b = (s.sample(model, schedule, (2, 4), "eps", gen(0)) for _ in range(2))
    c = s.sample(model, schedule, (2, 4), "eps", gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    seen = []
    # the hook sees every step and what it returns is used (here: project onto a known first coordinate)
    out = DPMSolverSampler(6, progress=False).sample(
        model, schedule, (2, 4), "eps", gen(0), step_hook=lambda x, t, i: seen.append(t) or x.index_fill(1, torch.tensor([0]), 0.25))
    assert seen == DPMSolverSampler(6).timesteps(schedule).tolist()[1:] + [-1]
    assert torch.all(out[:, 0] == 0.25)


def test_ddim_final_step_options():
    schedule = NoiseSchedule("linear", 100)
    model = gaussian_model(schedule, "x0")
    x_T = torch.randn(2, 3, generator=gen(5))
    one = DDIMSampler(4, "leading", set_alpha_to_one=True, clip_x0=False, progress=False).sample(model, schedule, x_T.shape, "x0", x_T=x_T)
    zero = DDIMSampler(4, "leading", set_alpha_to_one=False, clip_x0=False, progress=False).sample(model, schedule, x_T.shape, "x0", x_T=x_T)
    assert not torch.allclose(one, zero)
    # set_alpha_to_one ends on the model's x0 prediction at the last grid point (t=0)
    sampler = DDIMSampler(4, "leading", clip_x0=False, progress=False)
    states = []
    sampler.sample(model, schedule, x_T.shape, "x0", x_T=x_T, step_hook=lambda x, t, i: states.append(x) or x)
    assert torch.allclose(states[-1], model(states[-2], torch.zeros(2, dtype=torch.long)), atol=1e-6)


# ------------------------------------------------------------------ zero terminal SNR (Lin et al. 2024)
def test_zero_terminal_snr_v_prediction():
    schedule = NoiseSchedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True)
    assert float(schedule.alphas_cumprod64[-1]) == 0.0
    model = gaussian_model(schedule, "v")
    x_T = torch.randn(32, 4, generator=gen(6))
    ab0 = schedule.alphas_cumprod64[0]
    exact = exact_ode_solution(schedule, x_T, 999, ab0)  # from pure noise (abar_T = 0)
    assert torch.allclose(exact_ode_solution(schedule, x_T, 999, 1.0), C * x_T, atol=1e-6)
    errs = {}
    for n in (100, 200):
        for sampler in (DDIMSampler(n, "trailing", clip_x0=False, set_alpha_to_one=False, progress=False),
                        DPMSolverSampler(n, "trailing", clip_x0=False, final_sigmas="sigma_min", progress=False)):
            assert int(sampler.timesteps(schedule)[0]) == 999
            out = sampler.sample(model, schedule, x_T.shape, "v", x_T=x_T)
            assert torch.isfinite(out).all()
            errs[sampler.name, n] = (out - exact).abs().max().item()
    # both converge from abar_T = 0; DPM-Solver++(2M) at second order (measured ratios ~2 and ~3.2)
    assert errs["ddim", 200] < 0.03 and errs["dpm_solver", 200] < 0.01
    assert errs["ddim", 100] / errs["ddim", 200] > 1.8 and errs["dpm_solver", 100] / errs["dpm_solver", 200] > 2.8
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DDIMSampler(10, "trailing", progress=False).sample(gaussian_model(schedule, "eps"), schedule, (2, 4), "eps")


# ------------------------------------------------------------------ classifier-free guidance
@pytest.fixture(scope="module")
def cond_net():
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=1, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
               attention_resolutions=[], image_size=8, num_classes=4).eval()
    with torch.no_grad():  # zero-initialised output layers would make every branch identical
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_guidance_scale_one_is_the_conditional_model(cond_net):
    x, t, y = torch.randn(3, 1, 8, 8, generator=gen(7)), torch.tensor([5, 500, 900]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        plain = cond_net(x, t, y=y)
        guided = guided_model_fn(cond_net, {"y": y}, {"y": torch.full_like(y, -1)}, 1.0)(x, t)
        uncond = cond_net(x, t, y=torch.full_like(y, -1))
    assert torch.equal(guided, plain)
    assert not torch.allclose(plain, uncond)  # the condition matters, so the check above means something


def test_guidance_fused_batch_equals_separate(cond_net):
    x, t, y = torch.randn(3, 1, 8, 8, generator=gen(8)), torch.tensor([5, 500, 900]), torch.tensor([1, 0, 3])
    null = {"y": torch.full_like(y, -1)}
    with torch.no_grad():
        fused = guided_model_fn(cond_net, {"y": y}, null, 3.0, fuse_batches=True)(x, t)
        separate = guided_model_fn(cond_net, {"y": y}, null, 3.0, fuse_batches=False)(x, t)
        c, u = cond_net(x, t, y=y), cond_net(x, t, **null)
    assert torch.allclose(fused, separate, atol=1e-5)
    assert torch.allclose(separate, u + 3.0 * (c - u), atol=1e-6)
    # and a whole DDIM run with guidance gives the same samples either way
    schedule = NoiseSchedule("linear", 100)
    runs = [DDIMSampler(5, progress=False).sample(guided_model_fn(cond_net, {"y": y}, null, 2.0, fuse_batches=f),
                                                  schedule, (3, 1, 8, 8), "eps", gen(9)) for f in (True, False)]
    assert torch.allclose(runs[0], runs[1], atol=1e-4)


def test_guidance_interval_guides_only_inside_it(cond_net):
    """Kynkäänniemi et al. 2024: u + s (c - u) for lo <= t <= hi, the conditional model c elsewhere."""
    x, y = torch.randn(3, 1, 8, 8, generator=gen(10)), torch.tensor([1, 2, 3])
    null = {"y": torch.full_like(y, -1)}
    calls = []

    def counting_net(x, t, **c):
        calls.append(len(x))
        return cond_net(x, t, **c)

    with torch.no_grad():
        t = torch.tensor([5, 500, 900])  # one timestep below the interval, two inside
        mixed = guided_model_fn(cond_net, {"y": y}, null, 3.0, interval=[400, 900])(x, t)
        c, u = cond_net(x, t, y=y), cond_net(x, t, **null)
        expected = torch.where(torch.tensor([False, True, True]).view(3, 1, 1, 1), u + 3.0 * (c - u), c)
        assert torch.allclose(mixed, expected, atol=1e-6)
        assert not torch.allclose(mixed, u + 3.0 * (c - u), atol=1e-3)  # the row outside really differs
        # a batch wholly outside the interval is the plain conditional model, at one network call
        low = torch.full((3,), 100)
        fn = guided_model_fn(counting_net, {"y": y}, null, 3.0, interval=[400, 900])
        calls.clear()
        assert torch.equal(fn(x, low), cond_net(x, low, y=y)) and calls == [3]
        # wholly inside: exactly guidance without an interval
        high = torch.full((3,), 600)
        assert torch.equal(fn(x, high), guided_model_fn(cond_net, {"y": y}, null, 3.0)(x, high))
        # [0, T-1] is every step
        whole = guided_model_fn(cond_net, {"y": y}, null, 3.0, interval=[0, 999])(x, t)
        assert torch.allclose(whole, u + 3.0 * (c - u), atol=1e-6)
    for bad in ([5], [10, 5], [-1, 3], [0.5, 3]):
        with pytest.raises(ValueError, match="guidance_interval"):
            guided_model_fn(cond_net, {"y": y}, null, 3.0, interval=bad)


def test_module_guidance_interval_checked_against_schedule_and_used_in_sampling(cond_net):
    from lightning_modules.diffusion_module import DiffusionModule

    def module(interval):
        return DiffusionModule(net=cond_net, schedule=NoiseSchedule("linear", 100), optimizer=torch.optim.AdamW,
                               sampler=DDIMSampler(5, progress=False), num_classes=4, cond_drop_prob=0.1,
                               guidance_scale=3.0, guidance_interval=interval, sample_shape=[1, 8, 8], ema_decay=None)

    with pytest.raises(ValueError, match="< 100"):
        module([50, 100])  # the schedule has timesteps 0..99
    y = {"y": torch.tensor([0, 1])}
    draw = lambda m: m.sample(2, cond=y, generator=gen(11))  # noqa: E731
    limited, everywhere, none = module([50, 99]), module(None), module([0, 99])
    assert limited.guidance_interval == (50, 99)
    assert torch.equal(draw(none), draw(everywhere))  # the whole range is plain guidance
    assert not torch.allclose(draw(limited), draw(everywhere), atol=1e-4)  # the low-noise steps went unguided
    assert torch.equal(draw(limited), draw(limited))
