"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any conditional denoiser."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

NetFn = Callable[..., Tensor]


def _cat(a: Any, b: Any) -> Any:
    if a is None:
        return None
    if isinstance(a, Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch condition of type {type(a).__name__}")


def guided_model_fn(net_fn: NetFn, cond: dict[str, Any], null_cond: dict[str, Any] | None,
                    guidance_scale: float = 1.0, fuse_batches: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``model_fn(x, t)`` computing ``uncond + s * (cond - uncond)``.

    ``s = 1`` evaluates only the conditional branch (exactly the plain conditional model);
    ``s = 0`` only the unconditional one. With ``fuse_batches`` both branches run as one batch
    of size ``2B``, which is faster on accelerators.
    """
    if guidance_scale == 1.0 or null_cond is None:
        return lambda x, t: net_fn(x, t, **cond)
    if guidance_scale == 0.0:
        return lambda x, t: net_fn(x, t, **null_cond)

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        if fuse_batches:
            both = {k: _cat(cond[k], null_cond[k]) for k in cond}
            out = net_fn(torch.cat([x, x]), torch.cat([t, t]), **both)
            c, u = out.chunk(2)
        else:
            c, u = net_fn(x, t, **cond), net_fn(x, t, **null_cond)
        return u + guidance_scale * (c - u)

    return model_fn
