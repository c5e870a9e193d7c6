"""EMA maths, warm-up, and persistence in the module's state."""
import pytest
import torch
from torch import nn

from lightning_modules.diffusion.ema import EMA


def test_update_is_exponential_average():
    net = nn.Linear(3, 2)
    ema = EMA(net, max_decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for name, p in net.named_parameters():
        assert torch.allclose(ema.shadow.state_dict()[name], 0.9 * start[name] + 0.1 * p.detach(), atol=1e-6)


def test_warmup_decay_schedule():
    ema = EMA(nn.Linear(1, 1), max_decay=0.999, inv_gamma=1.0, power=2 / 3)
    for n in [1, 10, 100, 10_000]:
        assert ema.decay(n) == pytest.approx(min(0.999, 1 - (1 + n) ** (-2 / 3)))
    assert ema.decay(0) == 0.0


def test_many_updates_converge_to_weights():
    net = nn.Linear(2, 2)
    ema = EMA(net, max_decay=0.5, warmup=False)
    with torch.no_grad():
        net.weight.fill_(3.0)
    for _ in range(40):
        ema.update(net)
    assert torch.allclose(ema.shadow.weight, torch.full((2, 2), 3.0), atol=1e-6)
    assert int(ema.num_updates) == 40


def test_state_dict_round_trip():
    net = nn.Linear(2, 2)
    ema = EMA(net, max_decay=0.9)
    ema.update(net)
    ema2 = EMA(nn.Linear(2, 2), max_decay=0.9)
    ema2.load_state_dict(ema.state_dict())
    assert int(ema2.num_updates) == 1 and torch.equal(ema2.shadow.weight, ema.shadow.weight)
    assert not any(p.requires_grad for p in ema.shadow.parameters())
