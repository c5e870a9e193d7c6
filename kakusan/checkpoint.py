"""Rebuild a trained module (and its datamodule) from a self-describing checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .errors import UserError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass ckpt_path=<run folder>/checkpoints/last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: {e})") from e


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> DictConfig:
    meta = ckpt.get("kakusan") or {}
    if not meta.get("config"):
        raise UserError(f"{path} holds no kakusan run config (was it written by experiments.train?)")
    return OmegaConf.create(meta["config"])


def load_module(path: str | Path, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None):
    """Return ``(module, cfg)``: the LightningModule with the checkpoint's weights (EMA included).

    ``overrides`` (dotted keys) change the stored config before building, e.g.
    ``{"model.sampler": {...}}``.
    """
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    module = hydra.utils.instantiate(cfg.model)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match the model it describes "
                        f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    return module.to(device).eval(), cfg


def load_datamodule(cfg: DictConfig):
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    return dm
