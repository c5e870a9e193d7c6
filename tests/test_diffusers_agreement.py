"""Our schedules and samplers against huggingface/diffusers' schedulers (the reference implementation).

Both run the same deterministic dummy denoiser (a fixed smooth function of ``x`` and ``t``) from the
same ``x_T`` with the same noise stream; every intermediate state must agree within 1e-5.

Known, documented differences (not tested for equality):
- diffusers' DDIM steps from ``t`` to ``t - T // S``; ours steps to the next point of the grid. They
  coincide for ``leading`` and ``trailing`` grids when ``S`` divides ``T`` (tested), not for ``linspace``.
- diffusers' DDPM with ``fixed_large`` adds noise of variance ``1 - abar_t`` on the last step when
  the grid does not end at ``t = 0`` (trailing, steps_offset); ours returns the posterior mean.
- diffusers' DPM-Solver sets ``abar_T = 2**-24`` for zero-terminal-SNR schedules; ours uses 0 exactly.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from lightning_modules.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from lightning_modules.diffusion.schedule import NoiseSchedule

T = 1000
SHAPE = (2, 3, 4, 4)
PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# ours -> (diffusers name, beta_start, beta_end)
BETAS = {"linear": ("linear", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012),
         "cosine": ("squaredcos_cap_v2", 1e-4, 0.02)}


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed, smooth, non-linear function of (x, t): a stand-in denoiser both sides evaluate."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
    ramp = torch.linspace(-1, 1, x[0].numel()).reshape(x.shape[1:])
    return 0.6 * torch.tanh(x) + 0.1 * x * torch.cos(t / 150.0) + 0.2 * ramp * torch.sin(t / 97.0)


def schedules(kind: str, **diffusers_kw):
    name, b0, b1 = BETAS[kind]
    ours = NoiseSchedule(kind, T, beta_start=b0, beta_end=b1, zero_terminal_snr=diffusers_kw.get("rescale_betas_zero_snr", False))
    return ours, dict(num_train_timesteps=T, beta_schedule=name, beta_start=b0, beta_end=b1, **diffusers_kw)


def reference(cls, ours: NoiseSchedule, **kw):
    """A diffusers scheduler on our float64 alpha-bar table.

    diffusers builds ``alphas_cumprod`` with a float32 cumulative product (it agrees with ours to
    float32 rounding, see :func:`test_alphas_cumprod_match`) and derives its step coefficients in
    float32, where ``1 - abar_prev - sigma^2`` (DDIM, eta > 0) and ``1 / sqrt(abar)`` near ``t = T``
    (cosine, eps-prediction) lose up to ~5e-4. Given a float64 table its 0-dim coefficients are
    float64 while states stay float32, exactly as ours: the loops then compare the algorithms.
    """
    ref = cls(**kw)
    ref.alphas_cumprod = ours.alphas_cumprod64.clone()
    if hasattr(ref, "final_alpha_cumprod") and not kw.get("set_alpha_to_one", True):
        ref.final_alpha_cumprod = ref.alphas_cumprod[0]
    return ref


def set_steps(ref, steps: int):
    ref.set_timesteps(steps)
    if isinstance(ref, DPMSolverMultistepScheduler):  # its sigma table is rounded to float32: rebuild it in float64
        abar = ref.alphas_cumprod
        sig = ((1 - abar) / abar).sqrt()
        last = sig[:1] if ref.config.final_sigmas_type == "sigma_min" else torch.zeros(1, dtype=abar.dtype)
        ref.sigmas = torch.cat([sig[ref.timesteps], last])
    return ref


def run_ours(sampler, schedule, pred, x_T, seed=7):
    states = []
    gen = torch.Generator().manual_seed(seed)
    out = sampler.sample(dummy_model, schedule, SHAPE, pred, generator=gen, x_T=x_T.clone(),
                         step_hook=lambda x, t, i: states.append(x.clone()) or x)
    return out, states


def run_diffusers(sched, x_T, seed=7, **step_kw):
    states, x = [], x_T.clone()
    gen = torch.Generator().manual_seed(seed)
    for t in sched.timesteps:
        x = sched.step(dummy_model(x, t), t, x, generator=gen, **step_kw).prev_sample
        states.append(x.clone())
    return x, states


def assert_trajectories(ours, theirs, atol=1e-5):
    assert len(ours[1]) == len(theirs[1])
    for i, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert torch.allclose(a, b, atol=atol, rtol=0), f"step {i}: max diff {(a - b).abs().max():.2e}"
    assert torch.isfinite(ours[0]).all()


def tolerance(schedule: NoiseSchedule, pred: str, clipped: bool, t_first: int) -> float:
    """1e-5, widened where float32 cannot resolve it: an eps-model's unclipped ``x0 = (x - s eps) / a``
    is ~``1/a`` large near ``t = T`` (2e4 for cosine), and float32 holds that to ~1e-7 relative."""
    if pred != "eps" or clipped:
        return 1e-5
    return 1e-5 + 1e-6 / float(schedule.alphas_cumprod64[t_first].sqrt())


def x_T():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", list(BETAS))
def test_alphas_cumprod_match(kind):
    ours, kw = schedules(kind)
    ref = DDPMScheduler(**kw)
    assert torch.allclose(ours.betas, ref.betas, rtol=1e-5, atol=1e-8)
    assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod, rtol=2e-5, atol=1e-8)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333, 1000])
def test_timestep_grids_identical(spacing, steps):
    schedule = NoiseSchedule("linear", T)
    for ours, ref in ((DDIMSampler(steps, spacing), DDIMScheduler(timestep_spacing=spacing)),
                      (DDPMSampler(steps, spacing), DDPMScheduler(timestep_spacing=spacing)),
                      (DDIMSampler(steps, spacing, steps_offset=1) if spacing == "leading" and steps < T else None,
                       DDIMScheduler(timestep_spacing=spacing, steps_offset=1))):
        if ours is None:
            continue
        set_steps(ref, steps)
        assert torch.equal(ours.timesteps(schedule), ref.timesteps.long())
    if steps < T:
        ref = DPMSolverMultistepScheduler(timestep_spacing=spacing)
        set_steps(ref, steps)
        assert torch.equal(DPMSolverSampler(steps, spacing).timesteps(schedule), ref.timesteps.long())


@pytest.mark.parametrize("kind", list(BETAS))
@pytest.mark.parametrize("pred", list(PRED))
def test_ddim_loop_matches_diffusers(kind, pred):
    ours_sched, kw = schedules(kind)
    for spacing, eta, clip, one in (("leading", 0.0, True, True), ("trailing", 1.0, False, False)):
        ref = reference(DDIMScheduler, ours_sched, **kw, prediction_type=PRED[pred], timestep_spacing=spacing, clip_sample=clip,
                            set_alpha_to_one=one)
        set_steps(ref, 20)
        sampler = DDIMSampler(20, spacing, eta=eta, clip_x0=clip, set_alpha_to_one=one, progress=False)
        xT = x_T()
        assert_trajectories(run_ours(sampler, ours_sched, pred, xT),
                            run_diffusers(ref, xT, eta=eta, use_clipped_model_output=True),
                            tolerance(ours_sched, pred, clip, int(ref.timesteps[0])))


def test_ddim_dynamic_thresholding_matches_diffusers():
    ours_sched, kw = schedules("linear")
    ref = reference(DDIMScheduler, ours_sched, **kw, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    set_steps(ref, 25)
    sampler = DDIMSampler(25, "leading", dynamic_threshold=0.9, dynamic_threshold_max=1.5, progress=False)
    xT = x_T()
    assert_trajectories(run_ours(sampler, ours_sched, "eps", xT), run_diffusers(ref, xT, use_clipped_model_output=True))


@pytest.mark.parametrize("kind", list(BETAS))
@pytest.mark.parametrize("pred", list(PRED))
def test_dpm_solver_loop_matches_diffusers(kind, pred):
    ours_sched, kw = schedules(kind)
    for spacing, steps, final in (("linspace", 20, "zero"), ("trailing", 8, "zero"), ("leading", 10, "sigma_min")):
        ref = reference(DPMSolverMultistepScheduler, ours_sched, **kw, prediction_type=PRED[pred], timestep_spacing=spacing, solver_order=2,
                                          algorithm_type="dpmsolver++", lower_order_final=True, final_sigmas_type=final)
        set_steps(ref, steps)
        sampler = DPMSolverSampler(steps, spacing, final_sigmas=final, clip_x0=False, progress=False)
        xT = x_T()
        assert_trajectories(run_ours(sampler, ours_sched, pred, xT), run_diffusers(ref, xT),
                            tolerance(ours_sched, pred, False, int(ref.timesteps[0])))


def test_ddpm_full_loop_matches_diffusers():
    """All 1000 steps of Ho et al.'s Algorithm 2; the other parameterisations are covered respaced."""
    ours_sched, kw = schedules("linear")
    pred = "eps"
    ref = reference(DDPMScheduler, ours_sched, **kw, prediction_type=PRED[pred], clip_sample=True)
    set_steps(ref, T)
    xT = x_T()
    assert_trajectories(run_ours(DDPMSampler(None, progress=False), ours_sched, pred, xT), run_diffusers(ref, xT))


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", list(PRED))
def test_ddpm_respaced_matches_diffusers(spacing, variance, pred):
    ours_sched, kw = schedules("cosine")
    ref = reference(DDPMScheduler, ours_sched, **kw, variance_type=variance, timestep_spacing=spacing,
                    prediction_type=PRED[pred])
    set_steps(ref, 25)
    xT = x_T()
    ours = run_ours(DDPMSampler(25, spacing, variance=variance, progress=False), ours_sched, pred, xT)
    theirs = run_diffusers(ref, xT)
    if variance == "fixed_large" and spacing == "trailing":
        # documented difference: diffusers adds noise on the last step (grid ends at t=39, not 0)
        ours, theirs = (ours[0], ours[1][:-1]), (theirs[0], theirs[1][:-1])
        assert not torch.allclose(ours[0], theirs[0], atol=1e-3)
    assert_trajectories(ours, theirs)


def test_zero_terminal_snr_ddim_v_matches_diffusers():
    ours_sched, kw = schedules("linear", rescale_betas_zero_snr=True)
    assert float(ours_sched.alphas_cumprod64[-1]) == 0.0
    ref = reference(DDIMScheduler, ours_sched, **kw, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    assert float(ref.alphas_cumprod[-1]) == 0.0
    set_steps(ref, 25)
    sampler = DDIMSampler(25, "trailing", clip_x0=False, progress=False)
    assert int(sampler.timesteps(ours_sched)[0]) == T - 1  # starts from pure noise
    xT = x_T()
    assert_trajectories(run_ours(sampler, ours_sched, "v", xT), run_diffusers(ref, xT))


def test_zero_terminal_snr_dpm_solver_close_to_diffusers():
    # diffusers replaces abar_T = 0 by 2**-24 (sqrt = 2.4e-4), so agreement is only to ~1e-3.
    ours_sched, kw = schedules("scaled_linear", rescale_betas_zero_snr=True)
    ref = DPMSolverMultistepScheduler(**kw, prediction_type="v_prediction", timestep_spacing="trailing")
    ref.set_timesteps(10)
    xT = x_T()
    ours = run_ours(DPMSolverSampler(10, "trailing", clip_x0=False, progress=False), ours_sched, "v", xT)
    theirs = run_diffusers(ref, xT)
    assert torch.isfinite(ours[0]).all()
    assert (ours[0] - theirs[0]).abs().max() < 5e-3
