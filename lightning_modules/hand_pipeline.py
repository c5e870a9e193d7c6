"""Sampling the two-stage hand pipeline (Pelykh, Mercanoglu Sincan & Bowden 2024) from keypoints.

1. Render the keypoints in the hand's square crop; stage 1 generates the crop's RGB and mask.
2. Place the crop into the frame (inverse of the crop transform): known image + hand mask.
3. Stage 2 generates the frame from the frame keypoint map, the label and the known region, and
   the hand is blended in by one of the ``BLENDS``:

   - ``expansion``: RePaint-style replacement under a mask growing over the reverse process
     (:class:`~lightning_modules.diffusion.mask_expansion.ExpansionSchedule`), the paper's
     sequential mask expansion;
   - ``fixed``: the same with a fixed mask (radius ``r_end`` throughout);
   - ``paste``: no replacement while sampling; the hand is pasted into the final sample (one shot),
     under its mask dilated by ``paste_radius`` pixels (0: the mask itself);
   - ``one_stage``: no stage-1 hand at all: the frame from pose alone (stage 2 with an empty known
     region, or a dedicated one-stage model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from datamodules.base import DataError
from datamodules.hand_keypoints import check_keypoints, crop, hand_box, render_keypoints, to_crop_coords, uncrop
from kakusan.checkpoint import load_module

from .diffusion.mask_expansion import ExpansionSchedule, KnownRegionHook, dilate_mask
from .diffusion.samplers.base import Sampler

BLENDS = ("expansion", "fixed", "paste", "one_stage")


@dataclass
class RenderSettings:
    """How the conditions were rendered in training (read from the stage checkpoints' data config)."""

    image_size: int = 32
    crop_size: int = 32
    keypoint_mode: str = "skeleton"
    keypoint_sigma: float = 1.0
    margin: float = 0.25
    min_side: float = 0.25

    @classmethod
    def from_config(cls, data_cfg: Any) -> "RenderSettings":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: data_cfg[k] for k in names if k in data_cfg})


@dataclass
class HandsOutput:
    """Everything a figure or metric needs; frames ``(B, 3, S, S)`` in [-1, 1], masks in {0, 1}."""

    final: Tensor
    keypoint_map: Tensor                       # frame keypoint map (B, C, S, S)
    hand_rgb: Tensor | None = None             # stage-1 crop RGB (B, 3, s, s)
    hand_mask: Tensor | None = None            # stage-1 crop mask (B, 1, s, s)
    known: Tensor | None = None                # hand placed in the frame
    mask: Tensor | None = None                 # its mask in the frame
    composite_mask: Tensor | None = None       # the region finally taken from stage 1
    extras: dict[str, Any] = field(default_factory=dict)


class HandTwoStagePipeline:
    """Stage 1 + placement + stage 2. Build with :meth:`from_checkpoints` or from modules."""

    def __init__(self, stage1: Any, stage2: Any, render: RenderSettings, one_stage: Any | None = None,
                 sampler: Sampler | None = None, min_visible: int = 21) -> None:
        self.stage1, self.stage2, self.one_stage = stage1, stage2, one_stage
        self.render, self.sampler, self.min_visible = render, sampler, min_visible

    @classmethod
    def from_checkpoints(cls, stage1_ckpt: str, stage2_ckpt: str, one_stage_ckpt: str | None = None,
                         device: str | torch.device = "cpu", sampler: Sampler | None = None) -> "HandTwoStagePipeline":
        s1, cfg1 = load_module(stage1_ckpt, device)
        s2, cfg2 = load_module(stage2_ckpt, device)
        one = load_module(one_stage_ckpt, device)[0] if one_stage_ckpt else None
        r1, r2 = RenderSettings.from_config(cfg1.data), RenderSettings.from_config(cfg2.data)
        if (r1.keypoint_mode, r1.keypoint_sigma, r1.margin) != (r2.keypoint_mode, r2.keypoint_sigma, r2.margin):
            raise DataError(f"stage 1 ({stage1_ckpt}) and stage 2 ({stage2_ckpt}) were trained with different keypoint "
                            f"rendering ({r1} vs {r2}); train both with the same data.keypoint_* settings")
        render = RenderSettings(image_size=r2.image_size, crop_size=r1.crop_size, keypoint_mode=r1.keypoint_mode,
                                keypoint_sigma=r1.keypoint_sigma, margin=r1.margin, min_side=r1.min_side)
        return cls(s1, s2, render, one, sampler)

    @property
    def device(self) -> torch.device:
        return self.stage2.device

    # ------------------------------------------------------------------ pieces
    def conditions(self, keypoints: Tensor) -> dict[str, Tensor]:
        """Validated keypoints -> crop boxes, crop keypoint maps and frame keypoint maps."""
        kp = check_keypoints(keypoints, min_visible=self.min_visible).to(self.device)
        r = self.render
        box = hand_box(kp, r.margin, r.min_side)
        return {"keypoints": kp, "box": box,
                "crop_map": render_keypoints(to_crop_coords(kp, box), r.crop_size, r.keypoint_mode, r.keypoint_sigma),
                "frame_map": render_keypoints(kp, r.image_size, r.keypoint_mode, r.keypoint_sigma)}

    def generate_hands(self, crop_map: Tensor, y: Tensor | None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Stage 1: ``(rgb (B,3,s,s), mask (B,1,s,s) in {0,1})``."""
        cond: dict[str, Tensor] = {"cond_image": crop_map}
        if self.stage1.num_classes and y is not None:
            cond["y"] = y.to(self.device)
        out = self.stage1.sample(crop_map.shape[0], cond=cond, sampler=self.sampler, generator=generator)
        return out[:, :3].clamp(-1, 1), (out[:, 3:4] > 0).float()

    def place(self, rgb: Tensor, mask: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Crop -> frame: ``(known image, hand mask, coverage)`` at the frame size."""
        s = self.render.image_size
        if rgb.shape[-2:] != mask.shape[-2:] or mask.shape[1] != 1 or mask.shape[0] != rgb.shape[0]:
            raise DataError(f"hand mask {tuple(mask.shape)} does not match the hand crops {tuple(rgb.shape)}: "
                            f"one (1, H, W) mask per crop at the crop's resolution")
        known, cov = uncrop(rgb, box, s)
        hand, _ = uncrop(mask, box, s)
        valid = (cov > 0.999).float()
        return known.clamp(-1, 1), (hand > 0.5).float() * valid, valid

    # ------------------------------------------------------------------ the whole chain
    @torch.no_grad()
    def __call__(self, keypoints: Tensor, y: Tensor | None = None, blend: str = "expansion",
                 expansion: ExpansionSchedule | None = None, seed: int = 0,
                 hands: tuple[Tensor, Tensor] | None = None, stage2_sees_hand: bool = True,
                 paste_radius: int = 0) -> HandsOutput:
        """Generate frames for normalised keypoints ``(B, 21, 2|3)`` (and digit labels ``y``).

        ``hands`` reuses stage-1 outputs ``(rgb, mask)`` (the ablations compare blends on the same hands).
        ``stage2_sees_hand=False`` gives stage 2 an empty known region (pose and label only, as in the
        one-stage baseline), so the hand reaches the frame through the blend alone.
        ``paste_radius``: the ``paste`` blend's cut, in pixels from the hand mask (negative erodes).
        Seeds: stage 1 uses ``seed``, stage 2 ``seed + 1`` (and the hook's noise ``seed + 2``).
        """
        if blend not in BLENDS:
            raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
        c = self.conditions(keypoints)
        b = c["keypoints"].shape[0]
        if y is not None:
            y = torch.as_tensor(y, device=self.device).long()
            if y.shape != (b,):
                raise DataError(f"labels must have shape ({b},), got {tuple(y.shape)}")
        gen = lambda k: torch.Generator(device=self.device).manual_seed(seed + k)  # noqa: E731
        if blend == "one_stage":
            model = self.one_stage or self.stage2
            cond = model.frame_conditions(c["frame_map"], None, None, y)
            final = model.sample(b, cond=cond, sampler=self.sampler, generator=gen(1))
            return HandsOutput(final=final.clamp(-1, 1), keypoint_map=c["frame_map"])
        rgb, mask = hands if hands is not None else self.generate_hands(c["crop_map"], y, gen(0))
        known, hmask, valid = self.place(rgb.to(self.device), mask.to(self.device), c["box"])
        sched = expansion or ExpansionSchedule()
        region = (known, dilate_mask(hmask, self.stage2.eval_radius) * valid) if stage2_sees_hand else (None, None)
        cond = self.stage2.frame_conditions(c["frame_map"], *region, y)
        hook = None
        if blend == "paste":
            composite = dilate_mask(hmask, paste_radius) * valid
        else:
            sampler = self.sampler or self.stage2.sampler
            steps = len(sampler.timesteps(self.stage2.schedule))
            radii = sched.radii(steps) if blend == "expansion" else [sched.r_end] * steps
            hook = KnownRegionHook(self.stage2.schedule, known, hmask, radii, valid, gen(2))
            composite = hook.mask(steps - 1)
        final = self.stage2.sample(b, cond=cond, sampler=self.sampler, generator=gen(1), step_hook=hook)
        if blend == "paste":
            final = composite * known + (1 - composite) * final
        return HandsOutput(final=final.clamp(-1, 1), keypoint_map=c["frame_map"], hand_rgb=rgb, hand_mask=mask,
                           known=known, mask=hmask, composite_mask=composite,
                           extras={"radii": hook.radii if hook else None})
