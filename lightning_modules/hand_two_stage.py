"""The two diffusion models of the two-stage hand pipeline (Pelykh, Mercanoglu Sincan & Bowden 2024).

- :class:`HandGeneratorModule` (stage 1): generates a square hand crop **and its mask** together
  (4 channels: RGB + mask, all in [-1, 1]) from the rendered keypoints (concatenated channels) and
  optionally the digit label: the paper's multi-task hand generator.
- :class:`HandOutpaintModule` (stage 2): generates the full frame from the frame keypoint map, the
  label and a known region (known pixels + its mask as input channels). Training draws random
  known regions around the hand (the hand mask dilated by a random radius, or the hand's box),
  inpainting style, and drops the known region with ``known_drop_prob`` (``1.0`` gives the
  one-stage baseline: full frame from pose alone).

Both are :class:`DiffusionModule` specialised only through ``net_conditions``; the net is
:class:`~lightning_modules.nets.conditioned.ConditionedNet` around the :class:`UNet`.
The pipeline joining them is :mod:`lightning_modules.hand_pipeline`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .diffusion.mask_expansion import dilate_mask
from .diffusion_module import DiffusionModule


class HandConditionedModule(DiffusionModule):
    """A :class:`DiffusionModule` whose net takes ``cond_image`` = the batch's ``cond`` maps, concatenated.

    Args:
        cond_keys: keys of ``batch["cond"]`` stacked (in order) as ``cond_image``.
        **kw: :class:`DiffusionModule` arguments.
    """

    def __init__(self, *args: Any, cond_keys: list[str] | tuple[str, ...] = ("keypoint_map",), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cond_keys = tuple(cond_keys)

    def _cond_maps(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        cond = batch.get("cond") or {}
        missing = [k for k in self.cond_keys if k not in cond]
        if missing:
            raise KeyError(f"batch['cond'] lacks {missing}; the hands datamodule provides keypoint_map, mask, "
                           f"known, known_mask")
        return dict(cond)

    def net_conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        maps = self._cond_maps(batch)
        out = super().net_conditions(batch)  # {"y": ...} for class-conditional models
        out["cond_image"] = torch.cat([maps[k].float() for k in self.cond_keys], 1)
        return out

    # Sample grids during training (SampleLogger calls ``sample(num)`` without conditions): use the
    # conditions of the first validation batch, so the grids show the same poses every epoch.
    _preview: dict[str, Tensor] | None = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if batch_idx == 0 and self._preview is None:
            with torch.no_grad():
                self._preview = {k: v.detach()[:64] for k, v in self.net_conditions(batch).items()
                                 if isinstance(v, Tensor)}
        return super().validation_step(batch, batch_idx)

    def _preview_conditions(self, num: int) -> dict[str, Tensor]:
        if self._preview is None:
            dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
            if dm is None or not hasattr(dm, "real_batch"):
                raise ValueError(f"{type(self).__name__}.sample needs cond={{'cond_image': ...}} (rendered keypoints"
                                 f" etc.); use HandTwoStagePipeline to sample from keypoints")
            was = self.training
            self.eval()
            try:
                batch = dm.real_batch(64)
                batch = {k: ({c: t.to(self.device) for c, t in v.items()} if isinstance(v, dict) else v.to(self.device))
                         for k, v in batch.items()}
                self._preview = {k: v for k, v in self.net_conditions(batch).items() if isinstance(v, Tensor)}
            finally:
                self.train(was)
        idx = torch.arange(num) % next(iter(self._preview.values())).shape[0]
        return {k: v[idx.to(v.device)] for k, v in self._preview.items()}

    def sample(self, num: int, cond: dict[str, Any] | None = None, *args: Any, **kw: Any) -> Tensor:
        if cond is None or "cond_image" not in cond:
            cond = {**self._preview_conditions(num), **(cond or {})}
        return super().sample(num, cond, *args, **kw)


class HandGeneratorModule(HandConditionedModule):
    """Stage 1: hand crop RGB + mask (4 channels) conditioned on the crop's keypoint map."""

    def on_fit_start(self) -> None:
        if self.sample_shape is not None and self.sample_shape[0] != 4:
            raise ValueError(f"the hand generator outputs RGB + mask: sample_shape[0] must be 4, got {self.sample_shape}")


class HandOutpaintModule(HandConditionedModule):
    """Stage 2: full frame from pose, label and a known region (see the module docstring).

    Args:
        known_radius: ``[min, max]`` radius (pixels) of the random dilation of the hand mask in training.
        eval_radius: the fixed radius used in validation.
        box_prob: probability of using the hand's bounding box instead of a dilated mask.
        known_drop_prob: probability of an empty known region (1.0 = one-stage baseline).
    """

    def __init__(self, *args: Any, known_radius: tuple[int, int] | list[int] = (0, 3), eval_radius: int = 1,
                 box_prob: float = 0.2, known_drop_prob: float = 0.1,
                 cond_keys: list[str] | tuple[str, ...] = ("keypoint_map", "known", "known_mask"), **kw: Any) -> None:
        super().__init__(*args, cond_keys=cond_keys, **kw)
        lo, hi = int(known_radius[0]), int(known_radius[1])
        if lo > hi:
            raise ValueError(f"known_radius must be [min, max], got {list(known_radius)}")
        for name, p in (("box_prob", box_prob), ("known_drop_prob", known_drop_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        self.known_radius, self.eval_radius = (lo, hi), int(eval_radius)
        self.box_prob, self.known_drop_prob = box_prob, known_drop_prob

    def known_region(self, mask: Tensor, generator: torch.Generator | None = None, training: bool = True) -> Tensor:
        """A known-region mask ``(B, 1, H, W)`` around each hand mask."""
        b = mask.shape[0]
        dev = mask.device
        if not training:
            return dilate_mask(mask, self.eval_radius) if self.known_drop_prob < 1.0 else torch.zeros_like(mask)
        u = torch.rand(b, 3, generator=generator, device=dev)
        radius = self.known_radius[0] + (u[:, 0] * (self.known_radius[1] - self.known_radius[0] + 1)).long().clamp(
            max=self.known_radius[1] - self.known_radius[0])
        out = torch.zeros_like(mask, dtype=torch.float32)
        for r in radius.unique().tolist():
            sel = radius == r
            out[sel] = dilate_mask(mask[sel], int(r))
        use_box = u[:, 1] < self.box_prob
        if use_box.any():
            m = mask[use_box, 0] > 0.5
            rows, cols = m.any(2), m.any(1)  # (n, H), (n, W)
            box = rows[:, :, None] & cols[:, None, :]
            out[use_box] = box[:, None].float()
        out[u[:, 2] < self.known_drop_prob] = 0.0
        return out

    def net_conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        cond = dict(batch.get("cond") or {})
        if "known" in self.cond_keys and "mask" in cond and "x" in batch:
            gen = None
            if not self.training:  # validation: the same known regions every epoch
                gen = torch.Generator(device=batch["x"].device).manual_seed(self.val_timesteps_seed)
            known_mask = self.known_region(cond["mask"], gen, training=self.training)
            cond["known_mask"] = known_mask
            cond["known"] = batch["x"] * known_mask
        return super().net_conditions({**batch, "cond": cond})

    def frame_conditions(self, keypoint_map: Tensor, known: Tensor | None, known_mask: Tensor | None,
                         y: Tensor | None = None) -> dict[str, Tensor]:
        """Net conditions for sampling: ``known``/``known_mask`` ``None`` means an empty known region."""
        if known_mask is None:
            known_mask = torch.zeros_like(keypoint_map[:, :1])
            known = torch.zeros(keypoint_map.shape[0], 3, *keypoint_map.shape[-2:], device=keypoint_map.device)
        maps = {"keypoint_map": keypoint_map, "known": known * known_mask, "known_mask": known_mask}
        out: dict[str, Tensor] = {"cond_image": torch.cat([maps[k].float() for k in self.cond_keys], 1)}
        if self.num_classes and y is not None:
            out["y"] = y
        return out
