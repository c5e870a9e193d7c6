"""Known-region replacement with a mask that grows over the reverse process (sequential expansion).

Pelykh et al. (2024) blend the stage-1 hand into the stage-2 outpainting by fusing the two
trajectories under a mask that changes from step to step, so that the boundary between them is
re-generated gradually instead of in one cut. Here, in pixel space and RePaint style (Lugmayr et
al. 2022): after every sampler step ``i`` (now at timestep ``t_next``)

    x <- m_i * q_sample(known, t_next) + (1 - m_i) * x,      m_i = dilate(base_mask, r_i) * valid

(``x <- m_i * known + (1 - m_i) * x`` after the last step). The radius ``r_i`` (pixels, negative =
erosion) follows an :class:`ExpansionSchedule`: ``r_start`` until ``start_frac`` of the reverse
process, growing by ``growth_per_step`` pixels per step (or linearly) to ``r_end`` at ``end_frac``,
then fixed. A fixed mask (``r_start == r_end``) is plain RePaint-style replacement without resampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .schedule import NoiseSchedule


def disk(radius: int, device: torch.device | str | None = None) -> Tensor:
    r = int(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1, device=device), torch.arange(-r, r + 1, device=device),
                            indexing="ij")
    return ((yy * yy + xx * xx) <= r * r + r).float()  # "+ r" rounds the disk (r=1 gives a 3x3 cross+)


def dilate_mask(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of masks ``(B, 1, H, W)`` by a disk of ``radius`` pixels; negative = erosion."""
    m = (mask > 0.5).float()
    r = int(radius)
    if r == 0:
        return m
    if r < 0:
        return 1.0 - dilate_mask(1.0 - m, -r)
    k = disk(r, m.device)[None, None]
    return (F.conv2d(m, k, padding=r) > 0.5).float()


@dataclass
class ExpansionSchedule:
    """Mask radius per reverse step.

    Args:
        r_start: radius (pixels; negative erodes the base mask) before expansion starts.
        r_end: radius once expansion is over. ``r_end >= r_start``: the kept hand region grows
            outward (the issue's description). ``r_end < r_start``: it shrinks, i.e. the outpainted
            region expands into the hand (the wording of Pelykh et al.'s abstract), so the hand's
            edge is re-drawn by stage 2 in the last steps.
        start_frac, end_frac: fractions of the reverse process (0 = first step, 1 = last) where the
            change starts and by which it has reached ``r_end``.
        growth_per_step: pixels the radius moves per reverse step inside the window (``None``:
            spread ``|r_end - r_start|`` evenly over the window). The radius never passes ``r_end``.
    """

    r_start: int = -2
    r_end: int = 1
    start_frac: float = 0.0
    end_frac: float = 0.6
    growth_per_step: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_frac <= self.end_frac <= 1.0:
            raise ValueError(f"need 0 <= start_frac <= end_frac <= 1, got {self.start_frac}, {self.end_frac}")
        if self.growth_per_step is not None and self.growth_per_step <= 0:
            raise ValueError(f"growth_per_step must be > 0, got {self.growth_per_step}")

    @property
    def shrinks(self) -> bool:
        """True when the kept region shrinks (the outpainted region expands into the hand)."""
        return self.r_end < self.r_start

    def radii(self, num_steps: int) -> list[int]:
        """Radius used after each of ``num_steps`` reverse steps (monotone from ``r_start`` to ``r_end``)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        out = []
        i0 = self.start_frac * num_steps
        i1 = self.end_frac * num_steps
        span = abs(self.r_end - self.r_start)
        sign = -1 if self.shrinks else 1
        for i in range(num_steps):
            done = i + 1  # steps finished when the hook runs
            if done >= i1 or span == 0:
                moved = span if done >= i1 else 0
            elif done <= i0:
                moved = 0
            elif self.growth_per_step is not None:
                moved = min(span, math.floor(self.growth_per_step * (done - i0)))
            else:
                moved = math.floor(span * (done - i0) / max(i1 - i0, 1e-9))
            out.append(int(self.r_start + sign * moved))
        return out


class KnownRegionHook:
    """Sampler ``step_hook(x, t_next, i)`` pasting a noised known image under per-step masks.

    Args:
        schedule: the model's noise schedule (for ``q_sample``).
        known: known image ``(B, C, H, W)`` in model space.
        base_mask: ``(B, 1, H, W)`` region to keep at radius 0.
        radii: radius per step (from :meth:`ExpansionSchedule.radii`); its length must equal the
            sampler's number of steps.
        valid: ``(B, 1, H, W)`` where ``known`` is defined (the crop's footprint); masks never leave it.
        generator: noise for ``q_sample`` (reproducible samples).
    """

    def __init__(self, schedule: NoiseSchedule, known: Tensor, base_mask: Tensor, radii: list[int],
                 valid: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        if base_mask.shape[0] != known.shape[0] or base_mask.shape[-2:] != known.shape[-2:] or base_mask.shape[1] != 1:
            raise ValueError(f"base_mask must be (B, 1, H, W) matching known {tuple(known.shape)}, "
                             f"got {tuple(base_mask.shape)}")
        self.schedule, self.known, self.generator = schedule, known.float(), generator
        self.radii = list(radii)
        valid = torch.ones_like(base_mask) if valid is None else (valid > 0.5).float()
        self._masks = {r: dilate_mask(base_mask, r) * valid for r in sorted(set(self.radii))}
        self.last_known: Tensor | None = None
        self.last_mask: Tensor | None = None

    def mask(self, i: int) -> Tensor:
        return self._masks[self.radii[i]]

    def __call__(self, x: Tensor, t_next: int, i: int) -> Tensor:
        if i >= len(self.radii):
            raise ValueError(f"step {i} but the expansion schedule has {len(self.radii)} steps; build the radii "
                             f"with the sampler's number of steps")
        m = self.mask(i).to(x.device)
        known = self.known.to(x.device)
        if t_next >= 0:
            noise = torch.randn(known.shape, generator=self.generator, device=x.device)
            t = torch.full((x.shape[0],), int(t_next), device=x.device, dtype=torch.long)
            known = self.schedule.q_sample(known, t, noise)
        self.last_known, self.last_mask = known, m
        return m * known + (1 - m) * x
