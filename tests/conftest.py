"""Shared fixtures: compose the real Hydra configs on CPU, in a temporary run folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from kakusan.compose import compose_run_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
DATA_DIR = Path(os.environ.get("KAKUSAN_DATA_DIR", ROOT.parent / "shared" / "data"))

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


def compose_cfg(overrides: list[str], out: Path, config_name: str = "train") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as the entry point would, with the run folder (and a
    private cache) at ``out``."""
    return compose_run_config(overrides, out, config_name, private_cache=True)


@pytest.fixture
def make_cfg(tmp_path: Path):
    def _make(overrides: list[str] | None = None, config_name: str = "train", sub: str = "run") -> DictConfig:
        return compose_cfg(list(overrides or []), tmp_path / sub, config_name)

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny nets run fastest, and steadily, that way on a busy shared
    CPU (no OpenMP spin-waiting). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"real data folder {DATA_DIR} missing: set KAKUSAN_DATA_DIR to the shared data folder")
    return DATA_DIR
