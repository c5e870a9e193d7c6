"""eps / x0 / v conversions and loss weighting."""
import pytest
import torch

from lightning_modules.diffusion.losses import diffusion_loss, loss_weight
from lightning_modules.diffusion.parameterization import to_x0_eps, training_target
from lightning_modules.diffusion.schedule import NoiseSchedule


@pytest.mark.parametrize("ptype", ["eps", "x0", "v"])
def test_round_trip(ptype):
    s = NoiseSchedule("cosine", 1000)
    x0, eps = torch.randn(8, 2, 3, 3), torch.randn(8, 2, 3, 3)
    t = torch.randint(0, 1000, (8,))
    xt = s.q_sample(x0, t, eps)
    target = training_target(ptype, s, x0, eps, t)
    x0_hat, eps_hat = to_x0_eps(ptype, s, target, xt, t)
    assert torch.allclose(x0_hat, x0, atol=2e-3 if ptype == "eps" else 1e-4)
    assert torch.allclose(eps_hat, eps, atol=2e-3 if ptype == "x0" else 1e-4)


def test_v_definition_salimans_ho():
    s = NoiseSchedule("linear", 1000)
    x0, eps, t = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([5, 400, 990])
    a = s.alphas_cumprod[t].sqrt().view(-1, 1)
    sig = (1 - s.alphas_cumprod[t]).sqrt().view(-1, 1)
    assert torch.allclose(training_target("v", s, x0, eps, t), a * eps - sig * x0, atol=1e-6)


def test_min_snr_weights():
    s = NoiseSchedule("linear", 1000)
    t = torch.tensor([0, 300, 999])
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    assert torch.allclose(loss_weight("min_snr", s, t, "eps", 5.0), snr.clamp(max=5) / snr)
    assert torch.allclose(loss_weight("min_snr", s, t, "v", 5.0), snr.clamp(max=5) / (snr + 1))
    assert torch.allclose(loss_weight("min_snr", s, t, "x0", 5.0), snr.clamp(max=5))
    assert torch.equal(loss_weight("uniform", s, t, "eps"), torch.ones(3))


def test_loss_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="does not match target shape"):
        diffusion_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="unknown prediction type"):
        training_target("score", NoiseSchedule("linear", 10), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))
