"""Shared fixtures: compose the real Hydra configs on CPU, in a temporary run folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
DATA_DIR = Path(os.environ.get("KAKUSAN_DATA_DIR", ROOT.parent / "shared" / "data"))

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


def compose_cfg(overrides: list[str], out: Path, config_name: str = "train") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as the entry point would, with the run folder at ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.runtime.cwd = str(ROOT)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(out / "logs")
            cfg.paths.cache_dir = str(out / "cache")
            del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path):
    def _make(overrides: list[str] | None = None, config_name: str = "train", sub: str = "run") -> DictConfig:
        return compose_cfg(list(overrides or []), tmp_path / sub, config_name)

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"real data folder {DATA_DIR} missing: set KAKUSAN_DATA_DIR to the shared data folder")
    return DATA_DIR
