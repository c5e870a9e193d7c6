"""Exponential moving average of weights, with warm-up.

The EMA copy is an ordinary submodule of the LightningModule, so it is saved in and
restored from every checkpoint along with the raw weights (no EMA lost on resume).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow = decay * shadow + (1 - decay) * params``.

    Warm-up (as in Tarvainen & Valpola's ramp, also used by diffusers): the effective decay at
    update ``n`` is ``min(max_decay, 1 - (1 + n / inv_gamma) ** -power)``, so early updates track
    the raw weights closely. ``warmup=False`` uses ``max_decay`` from the first update.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, min_decay: float = 0.0,
                 warmup: bool = True, inv_gamma: float = 1.0, power: float = 2 / 3,
                 update_after_step: int = 0) -> None:
        super().__init__()
        if not 0.0 <= max_decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {max_decay}")
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)
        self.max_decay, self.min_decay = max_decay, min_decay
        self.warmup, self.inv_gamma, self.power = warmup, inv_gamma, power
        self.update_after_step = update_after_step
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def decay(self, n: int | None = None) -> float:
        n = int(self.num_updates) if n is None else n
        step = n - self.update_after_step
        if step <= 0:
            return 0.0
        if not self.warmup:
            return self.max_decay
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(self.max_decay, value))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay(int(self.num_updates) + 1)
        self.num_updates += 1
        src = dict(model.named_parameters())
        dst, srcs = [], []
        for name, p in self.shadow.named_parameters():
            dst.append(p)
            srcs.append(src[name].detach())
        # One multi-tensor kernel per dtype/device group instead of a Python loop over parameters
        # (same arithmetic as ``p.lerp_(q, 1 - d)`` / ``p.copy_(q)`` per tensor).
        if any(q.dtype != p.dtype for p, q in zip(dst, srcs)):
            srcs = [q.to(p.dtype) for p, q in zip(dst, srcs)]
        if dst:
            if d == 0.0:
                torch._foreach_copy_(dst, srcs)
            else:
                torch._foreach_lerp_(dst, srcs, 1 - d)
        src_b = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(src_b[name])

    def train(self, mode: bool = True) -> "EMA":
        # the shadow network is always in eval mode
        super().train(mode)
        self.shadow.eval()
        return self
